"""Every fast backend against the reference: outputs, final states and every gradient.

One test, every backend: the same cases run on ``cpu`` and ``gpu``; a backend that cannot
run here is skipped with the reason ``fastrnn.backends()`` gives.
"""

import itertools

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from conftest import (ALL_CELLS, FAST_BACKENDS, LSTM_CELLS, assert_close, backend_param,
                      random_problem)

CASES = list(itertools.product(ALL_CELLS, [np.float32, np.float64], [1, 2], [1, 2],
                               [False, True]))


def _ids(case):
    cell, dtype, L, D, var = case
    return f"{cell}-{np.dtype(dtype).name}-L{L}-D{D}-{'var' if var else 'full'}"


def _to(xp, a):
    return None if a is None else xp.asarray(a)


def _host(a):
    return a.get() if hasattr(a, "get") else a


def _run(backend, cell, x, weights, h0, c0, L, D, lengths, grads, xp):
    ws = [w.map(xp.asarray) for w in weights]
    out, h_n, c_n, ctx = F.rnn(cell, _to(xp, x), ws, _to(xp, h0), _to(xp, c0), num_layers=L,
                               bidirectional=D == 2, lengths=lengths, backend=backend)
    g_out, g_h, g_c = (_to(xp, g) for g in grads)
    dx, dh0, dc0, dws = F.rnn_backward(ctx, g_out, g_h, g_c if c_n is not None else None)
    for w, g in zip(ws, dws):  # a gradient for each weight there is, and only those
        assert list(g.present()) == list(w.present())
    flat = [out, h_n, c_n, dx, dh0, dc0] + [g for group in dws
                                            for g in group.present().values()]
    return [None if a is None else _host(a) for a in flat]


@pytest.mark.parametrize("backend", [backend_param(b) for b in FAST_BACKENDS])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_backend_matches_reference(backend, case):
    cell, dtype, L, D, var = case
    T, B, I, H = 7, 5, 6, 8
    x, weights, h0, c0 = random_problem(cell, T, B, I, H, L, D, dtype, seed=len(cell) + L)
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(s).astype(dtype)
             for s in [(T, B, D * H), (L * D, B, H), (L * D, B, H)]]
    lengths = np.array([7, 1, 4, 0, 6]) if var else None
    xp = __import__(fastrnn.backends()[backend]["array_module"])
    want = _run("numpy", cell, x, weights, h0, c0, L, D, lengths, grads, np)
    got = _run(backend, cell, x, weights, h0, c0, L, D, lengths, grads, xp)
    names = ["output", "h_n", "c_n", "grad_x", "grad_h0", "grad_c0"] + [
        f"grad_weights[{k}].{f}" for k in range(L * D) for f in weights[k].present()]
    for name, g, w in zip(names, got, want):
        if w is None:
            assert g is None, name
        else:
            assert_close(g, w, dtype, name)


@pytest.mark.parametrize("backend", [backend_param(b) for b in FAST_BACKENDS])
@pytest.mark.parametrize("cell", LSTM_CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("L,D,var", [(1, 1, False), (2, 2, True), (2, 1, True)])
def test_backend_matches_reference_with_a_projection(backend, cell, dtype, L, D, var):
    """The LSTMs with PyTorch's ``proj_size``: a state of P = 3 units from H = 8."""
    T, B, I, H, P = 7, 5, 6, 8, 3
    x, weights, h0, c0 = random_problem(cell, T, B, I, H, L, D, dtype, seed=L + D,
                                        proj_size=P)
    rng = np.random.default_rng(2)
    grads = [rng.standard_normal(s).astype(dtype)
             for s in [(T, B, D * P), (L * D, B, P), (L * D, B, H)]]
    lengths = np.array([7, 1, 4, 0, 6]) if var else None
    xp = __import__(fastrnn.backends()[backend]["array_module"])
    want = _run("numpy", cell, x, weights, h0, c0, L, D, lengths, grads, np)
    got = _run(backend, cell, x, weights, h0, c0, L, D, lengths, grads, xp)
    assert want[0].shape == (T, B, D * P) and want[1].shape == (L * D, B, P)
    assert want[-1].shape == (P, H)  # dw_hr
    for k, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, dtype, f"result {k}")


@pytest.mark.parametrize("backend", ["numpy"] + [backend_param(b) for b in FAST_BACKENDS])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("T,B", [(6, 0), (0, 3)])
@pytest.mark.parametrize("H", [8, 256])
def test_an_empty_batch_or_sequence_gives_empty_outputs_and_exact_gradients(backend, cell,
                                                                            T, B, H):
    """No rows (PyTorch accepts an empty batch) or no steps: outputs of the right shapes;
    with no steps the final states are the initial ones and their gradients pass straight
    through; with nothing to learn from, every weight gradient is zero. Both of the cpu
    backend's loop kinds: rows split between threads (H=8), hidden units split (H=256)."""
    L, D, I = 2, 2, 5
    x, weights, h0, c0 = random_problem(cell, T, B, I, H, L, D, np.float32, seed=3)
    rng = np.random.default_rng(4)
    grads = [rng.standard_normal(s).astype(np.float32)
             for s in [(T, B, D * H), (L * D, B, H), (L * D, B, H)]]
    xp = np if backend == "numpy" else \
        __import__(fastrnn.backends()[backend]["array_module"])
    got = _run(backend, cell, x, weights, h0, c0, L, D, None, grads, xp)
    out, h_n, c_n, dx, dh0, dc0 = got[:6]
    assert out.shape == (T, B, D * H) and dx.shape == (T, B, I)
    assert h_n.shape == dh0.shape == (L * D, B, H)
    if T == 0:
        np.testing.assert_array_equal(h_n, h0)
        np.testing.assert_array_equal(dh0, grads[1])
        if cell == "lstm":
            np.testing.assert_array_equal(c_n, c0)
            np.testing.assert_array_equal(dc0, grads[2])
    for k, (g, w) in enumerate(zip(got[6:], [w for group in weights
                                                for w in group.present().values()])):
        assert g.shape == w.shape and not np.any(g), f"weight gradient {k}"


@pytest.mark.parametrize("backend", [backend_param(b) for b in FAST_BACKENDS])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_backend_inference_saves_nothing_and_agrees(backend, cell):
    x, weights, h0, c0 = random_problem(cell, 9, 3, 4, 16, 1, 1, np.float32, seed=2)
    xp = __import__(fastrnn.backends()[backend]["array_module"])
    ws = [w.map(xp.asarray) for w in weights]
    out, h_n, c_n, ctx = F.rnn(cell, _to(xp, x), ws, _to(xp, h0), _to(xp, c0),
                               training=False, backend=backend)
    assert ctx is None
    ref = F.rnn(cell, x, weights, h0, c0, training=False, backend="numpy")
    assert_close(_host(out), ref[0], np.float32, "output")
    assert_close(_host(h_n), ref[1], np.float32, "h_n")


@pytest.mark.parametrize("backend", [backend_param(b) for b in FAST_BACKENDS])
@pytest.mark.parametrize("bf", [False, True])
def test_backend_layers_batch_first_and_lengths(backend, bf):
    a = fastrnn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=bf, seed=1,
                     backend="numpy")
    b = fastrnn.LSTM(6, 8, num_layers=2, bidirectional=True, batch_first=bf, seed=1,
                     backend=backend)
    xp = __import__(fastrnn.backends()[backend]["array_module"])
    x = np.random.default_rng(0).standard_normal((4, 9, 6) if bf else (9, 4, 6))
    x = x.astype(np.float32)
    lengths = [9, 3, 5, 1]
    out_a, (h_a, c_a) = a(x, lengths=lengths)
    out_b, (h_b, c_b) = b(_to(xp, x), lengths=lengths)
    assert_close(_host(out_b), out_a, np.float32, "output")
    assert_close(_host(c_b), c_a, np.float32, "c_n")
    g = np.random.default_rng(1).standard_normal(out_a.shape).astype(np.float32)
    dx_a, _ = a.backward(g)
    dx_b, _ = b.backward(_to(xp, g))
    assert_close(_host(dx_b), dx_a, np.float32, "grad_x")
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert_close(_host(pb.grad), pa.grad, np.float32, n)
