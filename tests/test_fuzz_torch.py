"""Random configurations against torch.nn with copied weights: layers and step cells, every
cell torch has, 1-3 layers, both directions, batch-first, bias, dropout in eval mode,
unsorted lengths, given or default states, unbatched inputs, training and inference, float32
and float64; outputs, final states and every gradient.

A fixed seed draws ``FASTRNN_FUZZ`` configurations (300 by default, as CI runs it); a
release check draws more, e.g. ``FASTRNN_FUZZ=5000 FASTRNN_FUZZ_SEED=7 pytest
tests/test_fuzz_torch.py``.
"""

import os

import numpy as np
import pytest

import fastrnn
from conftest import TOL, numpy_backends, rel_err

torch = pytest.importorskip("torch")

COUNT = int(os.environ.get("FASTRNN_FUZZ", "300"))
SEED = int(os.environ.get("FASTRNN_FUZZ_SEED", "20"))
CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def _config(k):
    r = np.random.default_rng([SEED, k])
    cfg = dict(cell=CELLS[r.integers(4)], dtype=(np.float32, np.float64)[r.integers(2)],
               T=int(r.integers(1, 10)), B=int(r.integers(1, 5)), I=int(r.integers(1, 9)),
               H=int(r.integers(1, 9)), bias=bool(r.random() < 0.75),
               train=bool(r.random() < 0.75), hx=bool(r.random() < 0.6))
    cfg["kind"] = "cell" if r.random() < 0.15 else "layer"
    if cfg["kind"] == "layer":
        cfg.update(L=int(r.integers(1, 4)), bi=bool(r.random() < 0.5),
                   bf=bool(r.random() < 0.5), unbatched=bool(r.random() < 0.15))
        cfg["dropout"] = 0.3 if (cfg["L"] > 1 and not cfg["train"] and r.random() < 0.5) \
            else 0.0
        if not cfg["unbatched"] and r.random() < 0.5:
            cfg["lengths"] = [int(n) for n in r.integers(1, cfg["T"] + 1, cfg["B"])]
    else:
        cfg["unbatched"] = bool(r.random() < 0.3)
    return cfg


def _kw(cell):
    return {"nonlinearity": cell[4:]} if cell.startswith("rnn") else {}


def _tensor(a, grad=False):
    return None if a is None else torch.tensor(a, requires_grad=grad)


def _check(what, got, want, dtype):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}"
    err = rel_err(got, want)
    assert err <= 5 * TOL[np.dtype(dtype).type], f"{what}: relative error {err:.3g}"


def _layer_case(cfg, backend, rng):
    cell, dt, T, B, I, H, L = (cfg[k] for k in ("cell", "dtype", "T", "B", "I", "H", "L"))
    D = 2 if cfg["bi"] else 1
    ours_cls = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU}.get(cell, fastrnn.RNN)
    torch_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(cell, torch.nn.RNN)
    args = dict(num_layers=L, bias=cfg["bias"], batch_first=cfg["bf"], dropout=cfg["dropout"],
                bidirectional=cfg["bi"], **_kw(cell))
    ours = ours_cls(I, H, dtype=dt, backend=backend, seed=1, **args)
    ref = torch_cls(I, H, **args).to(torch.float64 if dt == np.float64 else torch.float32)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    ours.train(cfg["train"])
    ref.train(cfg["train"] and cfg["dropout"] == 0)  # (dropout is only ever in eval here)
    lstm = cell == "lstm"
    x_shape = (T, I) if cfg["unbatched"] else (B, T, I) if cfg["bf"] else (T, B, I)
    s_shape = (L * D, H) if cfg["unbatched"] else (L * D, B, H)
    x = rng.standard_normal(x_shape).astype(dt)
    h0 = rng.standard_normal(s_shape).astype(dt) if cfg["hx"] else None
    c0 = rng.standard_normal(s_shape).astype(dt) if cfg["hx"] and lstm else None
    lengths = cfg.get("lengths")

    xt, h0t, c0t = _tensor(x, True), _tensor(h0, True), _tensor(c0, True)
    hx_t = None if h0t is None else (h0t, c0t) if lstm else h0t
    inp = xt if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(
        xt, torch.tensor(lengths), batch_first=cfg["bf"], enforce_sorted=False)
    out_t, hn_t = ref(inp, hx_t)
    if lengths is not None:
        out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_t, batch_first=cfg["bf"],
                                                          total_length=T)
    hx = None if h0 is None else (h0, c0) if lstm else h0
    out, hn = ours(x, hx, lengths=lengths)
    _check("output", out, out_t, dt)
    states = (hn, hn_t) if not lstm else ((hn[0], hn_t[0]), (hn[1], hn_t[1]))
    for name, (got, want) in zip(("h_n", "c_n"), states if lstm else [states]):
        _check(name, got, want, dt)
    if not cfg["train"]:
        return
    g_out = rng.standard_normal(out.shape).astype(dt)
    g_h = rng.standard_normal(s_shape).astype(dt)
    g_c = rng.standard_normal(s_shape).astype(dt) if lstm else None
    h_t, c_t = hn_t if lstm else (hn_t, None)
    loss = (out_t * torch.tensor(g_out)).sum() + (h_t * torch.tensor(g_h)).sum()
    if lstm:
        loss = loss + (c_t * torch.tensor(g_c)).sum()
        dx, (dh0, dc0) = ours.backward(g_out, (g_h, g_c))
    else:
        (dx, dh0), dc0 = ours.backward(g_out, g_h), None
    loss.backward()
    _check("grad_x", dx, xt.grad, dt)
    if h0t is not None:
        _check("grad_h0", dh0, h0t.grad, dt)
    if c0t is not None:
        _check("grad_c0", dc0, c0t.grad, dt)
    for (name, p), (tname, tp) in zip(ours.named_parameters(), ref.named_parameters()):
        assert name == tname
        _check(f"grad {name}", p.grad, tp.grad, dt)


def _cell_case(cfg, backend, rng):
    cell, dt, B, I, H = (cfg[k] for k in ("cell", "dtype", "B", "I", "H"))
    ours_cls = {"lstm": fastrnn.LSTMCell, "gru": fastrnn.GRUCell}.get(cell, fastrnn.RNNCell)
    torch_cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}.get(cell,
                                                                         torch.nn.RNNCell)
    ours = ours_cls(I, H, bias=cfg["bias"], dtype=dt, backend=backend, seed=2, **_kw(cell))
    ref = torch_cls(I, H, bias=cfg["bias"], **_kw(cell)).to(
        torch.float64 if dt == np.float64 else torch.float32)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    ours.train(cfg["train"])
    lstm = cell == "lstm"
    shape = (H,) if cfg["unbatched"] else (B, H)
    x = rng.standard_normal((I,) if cfg["unbatched"] else (B, I)).astype(dt)
    h = rng.standard_normal(shape).astype(dt) if cfg["hx"] else None
    c = rng.standard_normal(shape).astype(dt) if cfg["hx"] and lstm else None
    xt, ht, ct = _tensor(x, True), _tensor(h, True), _tensor(c, True)
    got = ours(x, None if h is None else (h, c) if lstm else h)
    want = ref(xt, None if ht is None else (ht, ct) if lstm else ht)
    got, want = (got, want) if lstm else ((got,), (want,))
    for name, a, b in zip(("h", "c"), got, want):
        _check(name, a, b, dt)
    if not cfg["train"]:
        return
    grads = [rng.standard_normal(shape).astype(dt) for _ in got]
    sum((b * torch.tensor(g)).sum() for b, g in zip(want, grads)).backward()
    if lstm:
        dx, (dh, dc) = ours.backward(tuple(grads))
    else:
        (dx, dh), dc = ours.backward(grads[0]), None
    _check("grad_x", dx, xt.grad, dt)
    for name, a, b in (("grad_h", dh, ht), ("grad_c", dc, ct)):
        if b is not None:
            _check(name, a, b.grad, dt)
    for (name, p), (_, tp) in zip(ours.named_parameters(), ref.named_parameters()):
        _check(f"grad {name}", p.grad, tp.grad, dt)


@pytest.mark.parametrize("backend", numpy_backends())
@pytest.mark.parametrize("k", range(COUNT))
def test_random_configuration_matches_torch(k, backend):
    cfg = _config(k)
    rng = np.random.default_rng([SEED, k, 1])
    (_layer_case if cfg["kind"] == "layer" else _cell_case)(cfg, backend, rng)
