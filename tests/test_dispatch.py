"""Backend selection: argument > set_backend > FASTRNN_BACKEND > auto, and its errors."""

import numpy as np
import pytest

import fastrnn
from fastrnn import dispatch


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("FASTRNN_BACKEND", raising=False)
    fastrnn.set_backend(None)
    yield
    fastrnn.set_backend(None)


def test_backends_reports_every_registered_name_with_a_reason():
    rep = fastrnn.backends()
    assert set(rep) == {"numpy", "cpu", "gpu"}
    assert rep["numpy"]["available"] and rep["numpy"]["reason"] is None
    for name, r in rep.items():
        assert r["available"] or r["reason"], name
    assert rep["gpu"]["array_module"] == "cupy"


def test_priority_argument_over_set_backend_over_env(monkeypatch):
    assert dispatch.get_backend() == "auto"
    monkeypatch.setenv("FASTRNN_BACKEND", "numpy")
    assert dispatch.get_backend() == "numpy"
    fastrnn.set_backend("auto")
    assert dispatch.get_backend() == "auto"
    fastrnn.set_backend(None)
    assert dispatch.get_backend() == "numpy"
    assert dispatch.resolve("numpy", np)[0] == "numpy"


def test_auto_picks_cpu_for_numpy_arrays_when_available():
    name, _ = dispatch.resolve(None, np)
    assert name == ("cpu" if fastrnn.backends()["cpu"]["available"] else "numpy")


def test_unknown_backend_names(monkeypatch):
    with pytest.raises(ValueError, match=r"set_backend\(name\): expected one of .* got 'tpu'"):
        fastrnn.set_backend("tpu")
    with pytest.raises(ValueError, match="backend: expected one of"):
        fastrnn.LSTM(3, 4, backend="fast")
    monkeypatch.setenv("FASTRNN_BACKEND", "quantum")
    with pytest.raises(ValueError, match="environment variable FASTRNN_BACKEND"):
        fastrnn.GRU(3, 4)(np.zeros((2, 1, 3), np.float32))


@pytest.mark.skipif(fastrnn.backends()["gpu"]["available"], reason="a GPU is present")
def test_unavailable_backend_is_an_error_with_its_reason():
    reason = fastrnn.backends()["gpu"]["reason"]
    with pytest.raises(fastrnn.BackendUnavailableError, match="'gpu' is not available"):
        fastrnn.set_backend("gpu")
    with pytest.raises(fastrnn.BackendUnavailableError, match=reason[:20]):
        fastrnn.LSTM(3, 4, backend="gpu")


def test_gpu_backend_on_numpy_arrays_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setitem(dispatch._loaded, "gpu", object())  # pretend it is available
    with pytest.raises(TypeError, match="backend 'gpu' works on cupy arrays, got numpy"):
        dispatch.resolve("gpu", np)


def test_mixed_and_foreign_arrays():
    class FakeCupy:
        pass
    FakeCupy.__module__ = "cupy._core.core"
    with pytest.raises(TypeError, match="mixed array modules: x is a NumPy array but h0 is"):
        dispatch.array_module(np.zeros(2), FakeCupy(), names=["x", "h0"])
    with pytest.raises(TypeError, match="w: expected a NumPy or CuPy array, got builtins.tuple"):
        dispatch.array_module((1, 2), names=["w"])


def test_env_var_selects_the_backend_used_by_layers(monkeypatch):
    monkeypatch.setenv("FASTRNN_BACKEND", "numpy")
    m = fastrnn.RNN(3, 4)
    out, _ = m(np.ones((2, 1, 3), np.float32))
    assert m._guard.ctx["ctx"]["backend"] == "numpy"


def test_auto_says_once_when_it_falls_back_to_the_reference(monkeypatch):
    """Where the cpu backend cannot run, auto uses the reference, with one warning."""
    monkeypatch.setitem(dispatch._loaded, "cpu",
                        fastrnn.BackendUnavailableError("numba cannot be imported (test)"))
    monkeypatch.setattr(dispatch, "_warned", set())
    with pytest.warns(RuntimeWarning, match="numba cannot be imported.*NumPy reference"):
        assert dispatch.resolve("auto", np)[0] == "numpy"
    assert dispatch.resolve("auto", np)[0] == "numpy"  # (a second warning would fail here)
    from fastrnn.cli import info_lines
    assert any("auto runs NumPy arrays on numpy (the reference" in line
               for line in info_lines())
