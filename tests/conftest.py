"""Shared helpers: tolerances per dtype, random problems, the backends under test."""

import numpy as np
import pytest

import fastrnn
from fastrnn.kernels.cells import CELLS
from fastrnn.kernels.contract import INITIAL_VALUES, Weights, weight_fields, weight_shapes

# One tolerance table per dtype (relative to the largest magnitude of the reference).
TOL = {np.float64: 1e-10, np.float32: 2e-4}
ALL_CELLS = sorted(CELLS)
LSTM_CELLS = [c for c in ALL_CELLS if CELLS[c].family == "lstm"]  # (the ones with proj_size)
# Every backend other than the reference is compared with it; unavailable ones skip with
# the reason fastrnn.backends() gives, so a missing backend is visible in the test report.
FAST_BACKENDS = ["cpu", "gpu"]


def backend_param(name):
    rep = fastrnn.backends()[name]
    marks = [] if rep["available"] else [pytest.mark.skip(reason=f"{name}: {rep['reason']}")]
    return pytest.param(name, marks=marks, id=name)


def numpy_backends():
    """Backends that run on NumPy arrays: the reference and, when available, cpu."""
    return [backend_param("numpy"), backend_param("cpu")]


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(np.abs(b).max(initial=0.0), 1e-30)
    return np.abs(a - b).max(initial=0.0) / scale


def assert_close(got, want, dtype, what=""):
    """Assert shape, then dtype, then values, within the dtype's tolerance."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    err = rel_err(got, want)
    assert err <= TOL[np.dtype(dtype).type], f"{what}: relative error {err:.3g}"


def random_problem(cell, T, B, I, H, L=1, D=1, dtype=np.float64, bias=True, seed=0,
                   scale=0.5, proj_size=0, layer_norm=False):
    """Random (never zero) input, states and weights for ``fastrnn.functional.rnn``
    (with ``proj_size``, an LSTM's projection: states ``h`` of that size; with
    ``layer_norm``, the gains, drawn around their initial values)."""
    rng = np.random.default_rng(seed)
    S = proj_size or H
    weights = []
    for k in range(L * D):
        shapes = weight_shapes(cell, I if k < D else D * S, H, proj_size)
        weights.append(Weights(**{
            f: (rng.uniform(-scale, scale, shapes[f]) + INITIAL_VALUES.get(f, 0.0)).astype(dtype)
            for f in weight_fields(cell, bias, proj_size > 0, layer_norm)}))
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = (0.5 * rng.standard_normal((L * D, B, S))).astype(dtype)
    c0 = (0.5 * rng.standard_normal((L * D, B, H))).astype(dtype) \
        if CELLS[cell].has_cell_state else None
    return x, weights, h0, c0
