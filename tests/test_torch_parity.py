"""fastrnn layers against torch.nn with copied weights, float64: values and every gradient."""

import itertools
import zlib

import numpy as np
import pytest

import fastrnn
from conftest import numpy_backends, rel_err

torch = pytest.importorskip("torch")

LAYERS = {
    "rnn_tanh": (fastrnn.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (fastrnn.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (fastrnn.LSTM, torch.nn.LSTM, {}),
    "lstm_proj": (fastrnn.LSTM, torch.nn.LSTM, {"proj_size": 2}),
    "gru": (fastrnn.GRU, torch.nn.GRU, {}),
}
T, B, I, H = 6, 4, 5, 3
GRID = list(itertools.product(sorted(LAYERS), [1, 2, 3], [False, True], [False, True],
                              [True, False], [False, True]))


def _ids(case):
    cell, L, bi, bf, bias, var = case
    return f"{cell}-L{L}-{'bi' if bi else 'uni'}-{'bf' if bf else 'tm'}-" \
           f"{'bias' if bias else 'nobias'}-{'var' if var else 'full'}"


def _pair(cell, L, bi, bf, bias, backend):
    ours_cls, torch_cls, kw = LAYERS[cell]
    ours = ours_cls(I, H, num_layers=L, bias=bias, batch_first=bf, bidirectional=bi,
                    dtype=np.float64, backend=backend, seed=L, **kw)
    ref = torch_cls(I, H, num_layers=L, bias=bias, batch_first=bf, bidirectional=bi,
                    **kw).double()
    # Weights go from fastrnn to PyTorch through state_dict: the names must match.
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, ref


def _torch_run(ref, x, h0, c0, lengths, bf):
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = None if c0 is None else torch.tensor(c0, requires_grad=True)
    hx = h0t if c0t is None else (h0t, c0t)
    if lengths is None:
        out, hn = ref(xt, hx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=bf, enforce_sorted=False)
        out, hn = ref(packed, hx)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=bf, total_length=T)
    return xt, h0t, c0t, out, hn


@pytest.mark.parametrize("backend", numpy_backends())
@pytest.mark.parametrize("case", GRID, ids=_ids)
def test_matches_torch(case, backend):
    cell, L, bi, bf, bias, var = case
    D = 2 if bi else 1
    ours, ref = _pair(cell, L, bi, bf, bias, backend)
    lstm = cell.startswith("lstm")
    S = LAYERS[cell][2].get("proj_size") or H  # the state's size
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    x = rng.standard_normal((B, T, I) if bf else (T, B, I))
    h0 = rng.standard_normal((L * D, B, S))
    c0 = rng.standard_normal((L * D, B, H)) if lstm else None
    lengths = np.array([T, 2, 5, 1]) if var else None

    if lstm:
        out, (h_n, c_n) = ours(x, (h0, c0), lengths=lengths)
    else:
        out, h_n = ours(x, h0, lengths=lengths)
    xt, h0t, c0t, out_t, hn_t = _torch_run(ref, x, h0, c0, lengths, bf)
    h_t, c_t = hn_t if lstm else (hn_t, None)
    assert out.shape == tuple(out_t.shape) and h_n.shape == tuple(h_t.shape)
    assert rel_err(out, out_t.detach().numpy()) < 1e-10
    assert rel_err(h_n, h_t.detach().numpy()) < 1e-10
    if lstm:
        assert rel_err(c_n, c_t.detach().numpy()) < 1e-10

    g_out = rng.standard_normal(out.shape)
    g_h = rng.standard_normal(h_n.shape)
    g_c = rng.standard_normal(c_n.shape) if lstm else None
    loss = (out_t * torch.tensor(g_out)).sum() + (h_t * torch.tensor(g_h)).sum()
    if lstm:
        loss = loss + (c_t * torch.tensor(g_c)).sum()
        dx, (dh0, dc0) = ours.backward(g_out, (g_h, g_c))
    else:
        dx, dh0 = ours.backward(g_out, g_h)
    loss.backward()
    assert rel_err(dx, xt.grad.numpy()) < 1e-10
    assert rel_err(dh0, h0t.grad.numpy()) < 1e-10
    if lstm:
        assert rel_err(dc0, c0t.grad.numpy()) < 1e-10
    names = [n for n, _ in ours.named_parameters()]
    assert names == [n for n, _ in ref.named_parameters()]
    for (name, p), (_, tp) in zip(ours.named_parameters(), ref.named_parameters()):
        assert rel_err(p.grad, tp.grad.numpy()) < 1e-10, name


@pytest.mark.parametrize("backend", numpy_backends())
@pytest.mark.parametrize("cell", sorted(LAYERS))
def test_unbatched_input_matches_torch(cell, backend):
    ours, ref = _pair(cell, 2, True, False, True, backend)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((T, I))
    out, hn = ours(x)
    out_t, hn_t = ref(torch.tensor(x))
    S = LAYERS[cell][2].get("proj_size") or H
    assert out.shape == (T, 2 * S)
    assert rel_err(out, out_t.detach().numpy()) < 1e-10
    h, ht = (hn[0], hn_t[0]) if cell.startswith("lstm") else (hn, hn_t)
    assert h.shape == (4, S)
    assert rel_err(h, ht.detach().numpy()) < 1e-10


CELLS = {
    "rnn_tanh": (fastrnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (fastrnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
    "lstm": (fastrnn.LSTMCell, torch.nn.LSTMCell, {}),
    "gru": (fastrnn.GRUCell, torch.nn.GRUCell, {}),
}


@pytest.mark.parametrize("backend", numpy_backends())
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_step_cells_match_torch_over_three_steps_of_bptt(cell, backend):
    ours_cls, torch_cls, kw = CELLS[cell]
    ours = ours_cls(I, H, dtype=np.float64, backend=backend, seed=4, **kw)
    ref = torch_cls(I, H, **kw).double()
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    rng = np.random.default_rng(9)
    xs = rng.standard_normal((3, B, I))
    g = rng.standard_normal((B, H))
    lstm = cell == "lstm"
    state, state_t = None, None
    xts = [torch.tensor(x, requires_grad=True) for x in xs]
    for x, xt in zip(xs, xts):
        state = ours(x, state)
        state_t = ref(xt, state_t)
    h, h_t = (state[0], state_t[0]) if lstm else (state, state_t)
    assert rel_err(h, h_t.detach().numpy()) < 1e-10
    (h_t * torch.tensor(g)).sum().backward()
    grad = (g, None) if lstm else g
    dxs = []
    for _ in range(3):  # BPTT by hand: newest step first
        dx, grad = ours.backward(grad)
        dxs.append(dx)
    for dx, xt in zip(reversed(dxs), xts):
        assert rel_err(dx, xt.grad.numpy()) < 1e-10
    for (name, p), (_, tp) in zip(ours.named_parameters(), ref.named_parameters()):
        assert rel_err(p.grad, tp.grad.numpy()) < 1e-10, name


@pytest.mark.skipif(not fastrnn.backends()["gpu"]["available"],
                    reason=f"gpu: {fastrnn.backends()['gpu']['reason']}")
@pytest.mark.parametrize("case", [c for c in GRID if c[1] == 2 and c[4]], ids=_ids)
def test_gpu_matches_torch(case):
    """The gpu backend against PyTorch (CPU, float64) with the same weights."""
    import cupy
    cell, L, bi, bf, bias, var = case
    D = 2 if bi else 1
    ours, ref = _pair(cell, L, bi, bf, bias, "gpu")
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    x = rng.standard_normal((B, T, I) if bf else (T, B, I))
    h0 = rng.standard_normal((L * D, B, LAYERS[cell][2].get("proj_size") or H))
    c0 = rng.standard_normal((L * D, B, H)) if cell.startswith("lstm") else None
    lengths = np.array([T, 2, 5, 1]) if var else None
    hx = cupy.asarray(h0) if c0 is None else (cupy.asarray(h0), cupy.asarray(c0))
    out, hn = ours(cupy.asarray(x), hx, lengths=lengths)
    xt, h0t, c0t, out_t, hn_t = _torch_run(ref, x, h0, c0, lengths, bf)
    assert rel_err(out.get(), out_t.detach().numpy()) < 1e-10
    g_out = rng.standard_normal(out.shape)
    out_t.backward(torch.tensor(g_out))
    dx, _ = ours.backward(cupy.asarray(g_out))
    assert rel_err(dx.get(), xt.grad.numpy()) < 1e-10
    for (name, p), (_, tp) in zip(ours.named_parameters(), ref.named_parameters()):
        assert rel_err(p.grad.get(), tp.grad.numpy()) < 1e-10, name
