"""What backward needs from the caller cannot change unnoticed between forward and
backward: the input and the states are the forward's own copies, and weights changed in
place give a clear error (as PyTorch's in-place checks do)."""

import numpy as np
import pytest

import fastrnn
from conftest import assert_close, numpy_backends
from fastrnn import Weights, functional, optim


def _grads(layer, x, hx, dy):
    out, _ = layer(x, hx)
    layer.zero_grad()
    dx, dh = layer.backward(dy)
    return out, dx, dh, {n: p.grad.copy() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("backend", numpy_backends())
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_input_and_states_refilled_before_backward(backend, cell, batch_first):
    """A loader buffer refilled between forward and backward (input and initial states,
    every layout): the gradients are those of the forward's data."""
    Layer = fastrnn.LSTM if cell == "lstm" else fastrnn.GRU
    layer = Layer(6, 16, num_layers=2, bidirectional=True, batch_first=batch_first,
                  backend=backend, dtype=np.float64, seed=0)
    rng = np.random.default_rng(1)
    shape = (3, 7, 6) if batch_first else (7, 3, 6)
    x, x_next = rng.standard_normal(shape), rng.standard_normal(shape)
    states = [rng.standard_normal((4, 3, 16)) for _ in range(2 if cell == "lstm" else 1)]
    hx = tuple(states) if cell == "lstm" else states[0]
    dy = rng.standard_normal((3, 7, 32) if batch_first else (7, 3, 32))
    want = _grads(layer, x.copy(), tuple(s.copy() for s in states) if cell == "lstm"
                  else states[0].copy(), dy)
    buffer = x.copy()
    out, _ = layer(buffer, hx)
    buffer[...] = x_next  # refilled in place (time-major contiguous: kept by reference)
    for s in states:
        s += 1.0
    layer.zero_grad()
    dx, dh = layer.backward(dy)
    assert_close(out, want[0], np.float64, "output")
    assert_close(dx, want[1], np.float64, "grad_x")
    for name, g in want[3].items():
        assert_close(getattr(layer, name).grad, g, np.float64, name)


@pytest.mark.parametrize("backend", numpy_backends())
@pytest.mark.parametrize("change", ["optimizer step", "element", "swap", "rebound copy"])
def test_weights_changed_in_place_before_backward_are_an_error(backend, change):
    lstm = fastrnn.LSTM(5, 8, num_layers=2, bidirectional=True, backend=backend, seed=0)
    x = np.random.default_rng(2).standard_normal((6, 2, 5)).astype(np.float32)
    out, _ = lstm(x)
    p = lstm.weight_hh_l1_reverse
    if change == "optimizer step":
        p.grad = np.ones_like(p.data)
        optim.SGD([p], lr=0.1).step()
    elif change == "element":
        p.data[3, 2] = np.nextafter(p.data[3, 2], np.float32(9))  # one ulp
    elif change == "swap":
        p.data[[0, 1]] = p.data[[1, 0]]
    else:  # a new array in place of the old: the saved one is unchanged, backward is right
        p.data = p.data + 1
    if change == "rebound copy":
        lstm.backward(np.ones_like(out))
        return
    with pytest.raises(RuntimeError, match=r"LSTM.backward\(\): parameter "
                       r"'weight_hh_l1_reverse' was changed in place after the forward call"):
        lstm.backward(np.ones_like(out))
    out, _ = lstm(x)  # a fresh forward makes backward possible again
    lstm.backward(np.ones_like(out))


@pytest.mark.parametrize("backend", numpy_backends())
def test_bias_changes_do_not_matter_and_cells_name_their_weights(backend):
    gru = fastrnn.GRU(4, 8, backend=backend, seed=0)
    x = np.random.default_rng(3).standard_normal((5, 2, 4)).astype(np.float32)
    out, _ = gru(x)
    gru.bias_hh_l0.data += 1  # the biases' values do not enter the gradients
    gru.backward(np.ones_like(out))
    cell = fastrnn.LSTMCell(4, 8, backend=backend, seed=0)
    h, c = cell(x[0])
    cell.weight_ih.data *= 2
    with pytest.raises(RuntimeError, match=r"LSTMCell.backward\(\): parameter 'weight_ih'"):
        cell.backward((np.ones_like(h), None))


@pytest.mark.parametrize("backend", numpy_backends())
def test_functional_api_names_the_weight(backend):
    rng = np.random.default_rng(4)
    ws = [Weights(rng.standard_normal((8, 3)), rng.standard_normal((8, 8))) for _ in range(2)]
    x = rng.standard_normal((4, 1, 3))
    out, _, _, ctx = functional.rnn("rnn_tanh", x, ws, bidirectional=True, backend=backend)
    x[...] = 0  # the caller's input, changed: the context has its own copy
    ws[1].w_ih[0, 0] += 1
    with pytest.raises(functional.WeightChangedError,
                       match=r"weights\[1\].w_ih \(layer 0, reverse direction\)"):
        functional.rnn_backward(ctx, np.ones_like(out))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 7, 64, 1001])
def test_fingerprint_sees_every_single_change_and_agrees_with_numpy(dtype, size):
    from fastrnn.kernels.fingerprint import _word_view, _words_numpy, fingerprint
    rng = np.random.default_rng(size)
    a = rng.standard_normal(size).astype(dtype)
    base = fingerprint(a)
    assert base == _words_numpy(np, _word_view(np, a)) == fingerprint(a.copy())
    for k in rng.integers(0, size, 5):
        b = a.copy()
        b[k] = np.nextafter(b[k], dtype(np.inf))
        assert fingerprint(b) != base
    if size > 1:
        b = a.copy()
        b[[0, -1]] = b[[-1, 0]]
        assert fingerprint(b) != base


@pytest.mark.parametrize("backend", numpy_backends())
def test_unguarded_call_keeps_the_callers_arrays_and_checks_nothing(backend):
    """``guard=False``: the caller promises the arrays stay as they are (fastrnn.torch,
    whose saved tensors check their versions); the context holds them, not copies, and
    backward computes from what it finds."""
    rng = np.random.default_rng(5)
    ws = [Weights(rng.standard_normal((24, 3)), rng.standard_normal((24, 6)),
                  rng.standard_normal(24), rng.standard_normal(24))]
    x, h0, c0 = rng.standard_normal((4, 2, 3)), rng.standard_normal((1, 2, 6)), \
        rng.standard_normal((1, 2, 6))
    dy = rng.standard_normal((4, 2, 6))
    out, _, _, ctx = functional.rnn("lstm", x, ws, h0, c0, backend=backend, guard=False)
    want = functional.rnn_backward(
        functional.rnn("lstm", x, ws, h0, c0, backend=backend)[3], dy)
    got = functional.rnn_backward(ctx, dy)
    for g, w in zip(got[:3] + tuple(got[3][0].present().values()),
                    want[:3] + tuple(want[3][0].present().values())):
        assert_close(g, w, np.float64, "gradient")
    ws[0].w_hh[0, 0] += 1  # no fingerprint: no error, and no copy of x either
    functional.rnn_backward(ctx, dy)
    x[...] = 0
    assert not np.allclose(functional.rnn_backward(ctx, dy)[3][0].w_ih, want[3][0].w_ih)
