"""fastrnn info and benchmark reports name NumPy's BLAS and its kernel, and warn when the
kernel is forced or older than the CPU allows."""

import pytest

from fastrnn import _blas_info
from fastrnn.cli import info_lines

pytest.importorskip("threadpoolctl")


def test_info_names_library_and_kernel():
    b = _blas_info.blas()
    assert b["library"] and b["kernel"] and b["threads"] >= 1
    line = next(line for line in info_lines() if line.startswith("blas:"))
    assert b["library"] in line and f"{b['kernel']} kernel" in line


def test_a_forced_kernel_is_named(monkeypatch):
    if _blas_info.blas()["library"] != "openblas":
        pytest.skip("NumPy's BLAS is not OpenBLAS here")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")  # (read here only: already loaded)
    assert "OPENBLAS_CORETYPE=Haswell forces" in _blas_info.describe()


def test_an_avx512_cpu_on_an_older_kernel_is_named(monkeypatch):
    b = _blas_info.blas()
    if b["library"] != "openblas":
        pytest.skip("NumPy's BLAS is not OpenBLAS here")
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    monkeypatch.setattr(_blas_info, "_cpu_flags",
                        lambda: {"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"})
    warning = _blas_info.blas()["warning"]
    if b["kernel"].lower() in _blas_info._AVX512_KERNELS:
        assert warning is None
    else:
        assert "has AVX-512 but OpenBLAS runs its" in warning
    monkeypatch.setattr(_blas_info, "_cpu_flags", lambda: {"avx2", "fma"})
    assert _blas_info.blas()["warning"] is None
