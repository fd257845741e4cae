"""The installed ``fastrnn`` command and the installed package layout."""

import os
import subprocess
import sys

import pytest

import fastrnn


def test_info_lists_versions_and_backends():
    out = subprocess.run([sys.executable, "-m", "fastrnn.cli", "info"], check=True,
                         capture_output=True, text=True).stdout
    assert f"fastrnn {fastrnn.__version__}" in out
    for name, rep in fastrnn.backends().items():
        line = next(l for l in out.splitlines() if l.startswith(f"  {name} "))
        if rep["available"]:
            assert line.endswith(" available"), line
        else:
            assert f"unavailable: {rep['reason']}" in line, line
    cells = next(l for l in out.splitlines() if l.startswith("cells (every backend): "))
    from fastrnn.kernels.cells import CELLS
    assert all(name in cells for name in CELLS)
    assert "gru_reset_before (GRU, reset_after=False)" in cells
    assert "lstm_peephole (LSTM, peepholes=True)" in cells
    assert "LSTM(proj_size=P)" in out


def test_info_names_a_bad_pinning_setting_instead_of_failing():
    env = dict(os.environ, FASTRNN_PIN_THREADS="yes")
    out = subprocess.run([sys.executable, "-m", "fastrnn.cli", "info"], check=True, env=env,
                         capture_output=True, text=True).stdout
    if fastrnn.backends()["cpu"]["available"]:
        assert "FASTRNN_PIN_THREADS must be '0'" in out and "got 'yes'" in out


def test_kernels_are_the_fastrnn_kernels_subpackage():
    import fastrnn.kernels.reference as ref
    assert ref.__name__ == "fastrnn.kernels.reference"


def test_info_names_the_l2_size_the_cpu_backend_reads():
    if not fastrnn.backends()["cpu"]["available"]:
        pytest.skip("the cpu backend is not available")
    from fastrnn.kernels.cpu import _caches
    out = subprocess.run([sys.executable, "-m", "fastrnn.cli", "info"], check=True,
                         capture_output=True, text=True).stdout
    assert f"L2 cache {_caches.l2_bytes() // 1024} KiB a core" in out, out


def test_info_says_how_idle_cpu_workers_wait():
    """What fastrnn set while Numba's pool started (GNU OpenMP: a short spin; others:
    sleep at once), or that the user's own setting applies."""
    if not fastrnn.backends()["cpu"]["available"]:
        pytest.skip("the cpu backend is not available")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    for extra, want in (({}, "(set by fastrnn)"), ({"OMP_WAIT_POLICY": "PASSIVE"}, "the user's")):
        out = subprocess.run([sys.executable, "-m", "fastrnn.cli", "info"], check=True,
                             capture_output=True, text=True, env=dict(env, **extra)).stdout
        line = next(l for l in out.splitlines() if "idle workers wait" in l)
        assert want in line, line
        if not extra:
            assert "GOMP_SPINCOUNT=10000" in line or "OMP_WAIT_POLICY=PASSIVE" in line, line
