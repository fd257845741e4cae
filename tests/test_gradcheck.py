"""The reference against finite differences in float64: every gradient, every cell."""

import numpy as np
import pytest

from fastrnn import functional as F
from fastrnn.kernels.cells import CELLS
from fastrnn.kernels.contract import Weights
from conftest import ALL_CELLS, LSTM_CELLS, random_problem

T, B, I, H = 5, 3, 4, 3
EPS = 1e-6


def _loss_and_grads(cell, x, weights, h0, c0, L, D, lengths, dropout, seeds):
    """Loss = <out,R> + <h_n,S> (+ <c_n,U>) with fixed random R, S, U, and its gradients."""
    R, S, U = seeds
    kw = dict(num_layers=L, bidirectional=D == 2, lengths=lengths, dropout=dropout,
              backend="numpy")

    def loss(x, weights, h0, c0):
        out, h_n, c_n, _ = F.rnn(cell, x, weights, h0, c0, training=True,
                                 rng=np.random.default_rng(7), **kw)
        total = (out * R).sum() + (h_n * S).sum()
        return total + ((c_n * U).sum() if c_n is not None else 0.0)

    out, h_n, c_n, ctx = F.rnn(cell, x, weights, h0, c0, training=True,
                               rng=np.random.default_rng(7), **kw)
    grads = F.rnn_backward(ctx, R, S, U if c_n is not None else None)
    return loss, grads




CASES = [(cell, 0) for cell in ALL_CELLS] + [(cell, 2) for cell in LSTM_CELLS]


@pytest.mark.parametrize("cell,proj_size", CASES,
                         ids=[f"{c}-proj{p}" if p else c for c, p in CASES])
@pytest.mark.parametrize("L", [1, 2])
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_reference_gradients_match_finite_differences(cell, proj_size, L, D, with_lengths):
    x, weights, h0, c0 = random_problem(cell, T, B, I, H, L, D, np.float64, seed=L * 10 + D,
                                        proj_size=proj_size)
    rng = np.random.default_rng(123)
    lengths = np.array([T, 2, 4]) if with_lengths else None
    P = proj_size or H
    R = rng.standard_normal((T, B, D * P))
    S = rng.standard_normal((L * D, B, P))
    U = rng.standard_normal((L * D, B, H))
    loss_fn, (dx, dh0, dc0, dws) = _loss_and_grads(
        cell, x, weights, h0, c0, L, D, lengths, 0.0, (R, S, U))

    # Flatten every input of the loss into one list so each can be perturbed alone.
    flat = [x, h0, c0] + [w for group in weights for w in group]
    grads = [dx, dh0, dc0] + [g for group in dws for g in group]
    per = len(Weights._fields)  # (absent weights are None, with None gradients)
    names = ["x", "h0", "c0"] + [f"w{k}.{f}" for k in range(len(weights))
                                 for f in Weights._fields]

    def loss(*args):
        ws = [Weights(*args[3 + per * k:3 + per * k + per]) for k in range(len(weights))]
        return loss_fn(args[0], ws, args[1], args[2])

    checked = 0
    for k, (name, a, g) in enumerate(zip(names, flat, grads)):
        if a is None:
            assert g is None, name
            continue
        assert g.shape == a.shape and g.dtype == a.dtype, name
        v = rng.standard_normal(a.shape)
        plus, minus = list(flat), list(flat)
        plus[k], minus[k] = a + EPS * v, a - EPS * v
        numeric = (loss(*plus) - loss(*minus)) / (2 * EPS)
        exact = float((g * v).sum())
        assert abs(numeric - exact) <= 1e-7 * max(1.0, abs(exact)), (name, numeric, exact)
        for idx in rng.choice(a.size, size=min(2, a.size), replace=False):
            e = np.zeros(a.size)
            e[idx] = EPS
            plus[k], minus[k] = a + e.reshape(a.shape), a - e.reshape(a.shape)
            numeric = (loss(*plus) - loss(*minus)) / (2 * EPS)
            assert abs(numeric - g.reshape(-1)[idx]) <= 1e-7 * max(1.0, abs(numeric)), \
                (name, int(idx))
        checked += 1
    assert checked == 2 + CELLS[cell].has_cell_state + len(weights[0].present()) * L * D


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_reference_gradients_with_dropout_between_layers(cell):
    """Dropout masks are part of the graph: with a fixed rng, gradients still match."""
    L, D = 2, 2
    x, weights, h0, c0 = random_problem(cell, T, B, I, H, L, D, np.float64, seed=3)
    rng = np.random.default_rng(5)
    R = rng.standard_normal((T, B, D * H))
    S = rng.standard_normal((L * D, B, H))
    U = rng.standard_normal((L * D, B, H))
    loss_fn, (dx, _, _, dws) = _loss_and_grads(
        cell, x, weights, h0, c0, L, D, None, 0.4, (R, S, U))
    for k, arr in [(None, x), ("w_ih", weights[0].w_ih), ("w_hh", weights[0].w_hh)]:
        v = rng.standard_normal(arr.shape)
        if k is None:
            numeric = (loss_fn(x + EPS * v, weights, h0, c0)
                       - loss_fn(x - EPS * v, weights, h0, c0)) / (2 * EPS)
            exact = (dx * v).sum()
        else:
            wp = [weights[0]._replace(**{k: arr + EPS * v})] + weights[1:]
            wm = [weights[0]._replace(**{k: arr - EPS * v})] + weights[1:]
            numeric = (loss_fn(x, wp, h0, c0) - loss_fn(x, wm, h0, c0)) / (2 * EPS)
            exact = (getattr(dws[0], k) * v).sum()
        assert abs(numeric - exact) <= 1e-7 * max(1.0, abs(exact))
