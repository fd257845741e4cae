"""Extreme inputs give finite results without warnings; long sequences just work."""

import warnings

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from conftest import ALL_CELLS, numpy_backends, random_problem


@pytest.mark.parametrize("backend", numpy_backends())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_inputs_of_1e4_stay_finite_without_warnings(cell, dtype, backend):
    x, weights, h0, c0 = random_problem(cell, 6, 3, 4, 5, 1, 2, dtype, seed=1)
    x = (np.sign(x) * 1e4).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any overflow or invalid-value warning fails
        out, h_n, c_n, ctx = F.rnn(cell, x, weights, h0, c0, bidirectional=True,
                                   backend=backend)
        grads = F.rnn_backward(ctx, np.ones_like(out), np.ones_like(h_n),
                               None if c_n is None else np.ones_like(c_n))
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(h_n))
    for g in [grads[0], grads[1]] + [a for group in grads[3] for a in group.present().values()]:
        assert np.all(np.isfinite(g))


@pytest.mark.parametrize("backend", numpy_backends())
def test_sequence_of_5000_steps(backend):
    m = fastrnn.LSTM(8, 16, backend=backend, seed=0)
    x = np.random.default_rng(0).standard_normal((5000, 2, 8)).astype(np.float32)
    out, (h, c) = m(x)
    dx, (dh, dc) = m.backward(np.ones_like(out))
    assert out.shape == (5000, 2, 16) and dx.shape == x.shape
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(m._parameters["weight_hh_l0"].grad))
    assert np.abs(out[-1]).max() > 0
