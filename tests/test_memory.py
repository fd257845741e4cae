"""The cpu backend's array cache: bounded, adaptable, released on request, shown."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from conftest import backend_param
from fastrnn.cli import info_lines

pytestmark = pytest.mark.parametrize("backend", [backend_param("cpu")])


@pytest.fixture
def cache_limit():
    """Run with the given limit, then put the default back and empty the cache."""
    from fastrnn.kernels.cpu import _alloc
    before = _alloc.limit()
    yield fastrnn.set_cache_limit
    fastrnn.set_cache_limit(before)
    fastrnn.empty_cache()


def test_variable_shapes_stay_under_the_limit_and_empty_cache_frees(backend, cache_limit):
    cache_limit(24 << 20)
    rng = np.random.default_rng(0)
    lstm = fastrnn.LSTM(32, 256, backend="cpu", seed=0)
    most = 0
    for T in rng.integers(20, 120, size=12):  # a new shape (size class) nearly every call
        x = rng.standard_normal((int(T), 24, 32)).astype(np.float32)
        out, _ = lstm(x)
        lstm.backward(np.ones_like(out))
        most = max(most, fastrnn.cache_info()["idle_bytes"])
    assert 0 < most <= 24 << 20
    info = fastrnn.cache_info()
    assert info["limit_bytes"] == 24 << 20 and info["misses"] > 0
    del out, x
    lstm.zero_grad()
    lstm(np.ones((5, 1, 32), np.float32))  # (drops what the last training forward saved)
    held = fastrnn.cache_info()["idle_bytes"]
    assert fastrnn.empty_cache() == held > 0
    assert fastrnn.cache_info()["idle_bytes"] == 0 == fastrnn.cache_info()["idle_blocks"]


def test_repeated_shapes_reuse_blocks(backend, cache_limit):
    lstm = fastrnn.LSTM(32, 256, backend="cpu", seed=0)
    x = np.random.default_rng(1).standard_normal((60, 24, 32)).astype(np.float32)
    for _ in range(2):
        out, _ = lstm(x)
        lstm.backward(np.ones_like(out))
    hits = fastrnn.cache_info()["hits"]
    out, _ = lstm(x)
    lstm.backward(np.ones_like(out))
    assert fastrnn.cache_info()["hits"] > hits


def test_a_zero_limit_keeps_nothing_and_results_stay_right(backend, cache_limit):
    cache_limit(0)
    ref = fastrnn.GRU(16, 256, backend="numpy", seed=3)
    gru = fastrnn.GRU(16, 256, backend="cpu", seed=3)
    x = np.random.default_rng(2).standard_normal((50, 24, 16)).astype(np.float32)
    for _ in range(2):
        np.testing.assert_allclose(gru(x)[0], ref(x)[0], atol=2e-4)
    assert fastrnn.cache_info()["idle_bytes"] == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "1G", True, None])
def test_set_cache_limit_refuses_bad_values(backend, bad):
    with pytest.raises(ValueError, match=r"nbytes: expected an integer >= 0, got"):
        fastrnn.set_cache_limit(bad)


def test_environment_setting_and_info(backend):
    code = ("import fastrnn, numpy as np; "
            "fastrnn.GRU(2, 3)(np.ones((2, 1, 2), np.float32)); "
            "print(fastrnn.cache_info()['limit_bytes'])")
    for value, want in (("64M", str(64 << 20)), ("1g", str(1 << 30)), ("0", "0"),
                        ("1048576", "1048576")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "FASTRNN_CACHE_LIMIT": value})
        assert out.stdout.strip() == want, out.stderr
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "FASTRNN_CACHE_LIMIT": "lots"})
    assert out.returncode != 0
    assert "FASTRNN_CACHE_LIMIT: expected a size in bytes such as" in out.stderr
    line = next(l for l in info_lines() if "array cache" in l)
    assert "MiB idle" in line and "limit" in line
