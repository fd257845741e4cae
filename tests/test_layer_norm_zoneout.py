"""Layer-normalised cells and zoneout: the reference against finite differences and an
independent PyTorch loop of the equations, every NumPy backend against the reference, the
layers and cells, zoneout's rules."""

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from conftest import assert_close, numpy_backends, random_problem

LN_CELLS = ["lstm", "lstm_peephole", "gru", "rnn_tanh", "rnn_relu"]


def _problem(cell, T, B, I, H, L=1, D=1, dtype=np.float64, seed=0, proj_size=0,
             layer_norm=True):
    """Random input, states and Weights (LayerNorm gains around their initial values)."""
    return random_problem(cell, T, B, I, H, L, D, dtype, seed=seed, scale=0.6,
                          proj_size=proj_size, layer_norm=layer_norm)


CASES = [(c, 0, True) for c in LN_CELLS] + [("lstm", 2, True), ("lstm_peephole", 2, True),
                                             ("gru", 0, False), ("lstm", 0, False),
                                             ("gru_reset_before", 0, False)]


@pytest.mark.parametrize("cell,proj_size,layer_norm", CASES,
                         ids=[f"{c}-P{p}-ln{int(n)}" for c, p, n in CASES])
@pytest.mark.parametrize("D,lengths", [(1, None), (2, [5, 2, 0])])
def test_reference_gradients_match_finite_differences(cell, proj_size, layer_norm, D,
                                                      lengths):
    """Every input, state and weight (the gains included), two layers, zoneout between
    steps with its masks fixed by the generator's seed, float64."""
    T, B, I, H, L = 5, 3, 4, 3, 2
    x, weights, h0, c0 = _problem(cell, T, B, I, H, L, D, seed=D, proj_size=proj_size,
                                  layer_norm=layer_norm)
    rng = np.random.default_rng(11)
    S = proj_size or H
    R, Sg = rng.standard_normal((T, B, D * S)), rng.standard_normal((L * D, B, S))
    U = rng.standard_normal((L * D, B, H))
    kw = dict(num_layers=L, bidirectional=D == 2, lengths=lengths, zoneout=0.3,
              backend="numpy")

    def loss(x, weights, h0, c0):
        out, h_n, c_n, _ = F.rnn(cell, x, weights, h0, c0, rng=np.random.default_rng(5),
                                 **kw)
        return (out * R).sum() + (h_n * Sg).sum() + (0 if c_n is None else (c_n * U).sum())

    out, h_n, c_n, ctx = F.rnn(cell, x, weights, h0, c0, rng=np.random.default_rng(5), **kw)
    dx, dh0, dc0, dws = F.rnn_backward(ctx, R, Sg, None if c_n is None else U)
    checks = [("x", x, dx, lambda a: (a, weights, h0, c0)),
              ("h0", h0, dh0, lambda a: (x, weights, a, c0))]
    if c0 is not None:
        checks.append(("c0", c0, dc0, lambda a: (x, weights, h0, a)))
    for k, w in enumerate(weights):
        for f, a in w.present().items():
            checks.append((f"{k}.{f}", a, getattr(dws[k], f),
                           lambda b, k=k, f=f: (x, weights[:k] + [weights[k]._replace(**{f: b})]
                                                + weights[k + 1:], h0, c0)))
    for name, a, g, args in checks:
        v = rng.standard_normal(a.shape)
        eps = 1e-6
        numeric = (loss(*args(a + eps * v)) - loss(*args(a - eps * v))) / (2 * eps)
        exact = float((g * v).sum())
        assert abs(numeric - exact) <= 1e-7 * max(1.0, abs(exact)), (name, numeric, exact)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_reference_matches_a_pytorch_loop_of_the_equations(cell):
    """An independent implementation: torch.nn.functional.layer_norm and the cell's
    equations step by step (the issue's definitions), zoneout in eval (its expectation)."""
    torch = pytest.importorskip("torch")
    T, B, I, H, p = 6, 3, 4, 5, 0.25
    x, weights, h0, c0 = _problem(cell, T, B, I, H, seed=2)
    out, h_n, c_n, _ = F.rnn(cell, x, weights, h0, c0, zoneout=p, training=False,
                             backend="numpy")
    w = {f: torch.from_numpy(a) for f, a in weights[0].present().items()}
    t = torch.from_numpy
    ln = torch.nn.functional.layer_norm
    h, c = t(h0[0]), None if c0 is None else t(c0[0])
    ys = []
    for s in range(T):
        a_x = ln(t(x[s]) @ w["w_ih"].T, (w["w_ih"].shape[0],), w["ln_ih"], eps=1e-5)
        a_h = ln(h @ w["w_hh"].T, (w["w_hh"].shape[0],), w["ln_hh"], eps=1e-5)
        a_x, a_h = a_x + w["b_ih"], a_h + w["b_hh"]
        if cell == "lstm":
            i, f, g, o = (a_x + a_h).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            new = torch.sigmoid(o) * torch.tanh(ln(c, (H,), w["ln_c"], w["ln_c_bias"],
                                                   eps=1e-5))
        elif cell == "gru":
            xr, xz, xn = a_x.chunk(3, dim=1)
            hr, hz, hn = a_h.chunk(3, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            new = (1 - z) * n + z * h
        else:
            new = torch.tanh(a_x + a_h)
        h = p * h + (1 - p) * new
        ys.append(h)
    assert_close(out, torch.stack(ys).numpy(), np.float64, "output")
    assert_close(h_n[0], h.numpy(), np.float64, "h_n")
    if c is not None:
        assert_close(c_n[0], c.numpy(), np.float64, "c_n")


@pytest.mark.parametrize("backend", numpy_backends())
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell,proj_size,layer_norm", CASES,
                         ids=[f"{c}-P{p}-ln{int(n)}" for c, p, n in CASES])
@pytest.mark.parametrize("L,D,lengths", [(1, 1, None), (2, 2, [7, 3, 0, 6])])
def test_backend_matches_reference(backend, dtype, cell, proj_size, layer_norm, L, D,
                                   lengths):
    """Outputs, final states, and every gradient, training with zoneout and dropout (the
    same masks: the same generator's seed), then eval."""
    T, B, I, H = 7, 4, 5, 16
    x, weights, h0, c0 = _problem(cell, T, B, I, H, L, D, dtype, seed=L + D,
                                  proj_size=proj_size, layer_norm=layer_norm)
    kw = dict(num_layers=L, bidirectional=D == 2, lengths=lengths, zoneout=0.2,
              dropout=0.3)
    dy = np.random.default_rng(4).standard_normal((T, B, D * (proj_size or H))).astype(dtype)
    results = []
    for b in ("numpy", backend):
        out, h_n, c_n, ctx = F.rnn(cell, x, weights, h0, c0, rng=np.random.default_rng(9),
                                   backend=b, **kw)
        dx, dh0, dc0, dws = F.rnn_backward(ctx, dy)
        ev = F.rnn(cell, x, weights, h0, c0, training=False, backend=b, **kw)
        results.append([out, h_n, c_n, dx, dh0, dc0, ev[0], ev[1]]
                       + [g for w in dws for g in w.present().values()])
    tol = 1e-3 if dtype == np.float32 and layer_norm else None  # (see below)
    for k, (want, got) in enumerate(zip(*results)):
        if want is None:
            assert got is None
        elif tol is None:
            assert_close(got, want, dtype, f"result {k}")
        else:  # a float32 LayerNorm's backward divides by small spreads: a looser bound
            assert np.abs(got - want).max() <= tol * np.abs(want).max(), f"result {k}"


@pytest.mark.parametrize("backend", numpy_backends())
def test_zoneout_rules(backend):
    """p = 0 is the plain cell; p = 1 never changes the state; training masks repeat with
    the layer's seed and differ between seeds; eval is the expectation h = p h_prev + (1 -
    p) h~, the same with and without lengths."""
    x = np.random.default_rng(0).standard_normal((9, 3, 4)).astype(np.float64)

    def run(zoneout, seed=1, train=True, **kw):
        m = fastrnn.GRU(4, 6, zoneout=zoneout, seed=seed, backend=backend, dtype=np.float64,
                        **kw)
        m.train(train)
        return m(x)

    plain = fastrnn.GRU(4, 6, seed=1, backend=backend, dtype=np.float64)(x)
    np.testing.assert_array_equal(run(0.0)[0], plain[0])
    out, h_n = run(1.0)
    assert np.all(out == 0) and np.all(h_n == 0)  # (h0 = 0 stays)
    a, b, other = run(0.4)[0], run(0.4)[0], run(0.4, seed=2)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, other)
    # eval: step by step with a cell of the same weights, mixed by hand
    m = fastrnn.GRU(4, 6, zoneout=0.4, seed=1, backend=backend, dtype=np.float64).eval()
    cell = fastrnn.GRUCell(4, 6, backend=backend, dtype=np.float64)
    cell.load_state_dict({k[:-3]: v for k, v in m.state_dict().items()})
    h = np.zeros((3, 6))
    for t in range(9):
        h = 0.4 * h + 0.6 * cell.eval()(x[t], h)
    assert_close(m(x)[1][0], h, np.float64, "eval h_n")


def test_zoneout_masks_are_drawn_per_unit_and_step():
    """In training a unit keeps its previous value (exactly) at about a fraction p of the
    steps."""
    m = fastrnn.RNN(3, 64, zoneout=0.3, seed=0, dtype=np.float64, backend="numpy")
    out, _ = m(np.random.default_rng(1).standard_normal((200, 4, 3)))
    kept = (out[1:] == out[:-1]).mean()
    assert 0.27 < kept < 0.33


@pytest.mark.parametrize("backend", numpy_backends())
def test_layers_and_cells_with_layer_norm(backend):
    """Parameters with their names, shapes and initial values, repr, a cell step equal to
    a one-step layer, eval cells with zoneout equal to the expectation."""
    lstm = fastrnn.LSTM(5, 8, num_layers=2, bidirectional=True, layer_norm=True,
                        zoneout=0.1, backend=backend, seed=0)
    params = dict(lstm.named_parameters())
    assert params["ln_weight_ih_l1_reverse"].data.shape == (32,)
    assert np.all(params["ln_weight_hh_l0"].data == 1)
    assert np.all(params["ln_weight_c_l1"].data == 1) and np.all(params["ln_bias_c_l0"].data
                                                                 == 0)
    assert "layer_norm=True, zoneout=0.1" in repr(lstm)
    plain = fastrnn.LSTM(5, 8, num_layers=2, bidirectional=True, backend=backend, seed=0)
    for name, p in plain.named_parameters():  # (the gains draw nothing from the seed)
        np.testing.assert_array_equal(p.data, params[name].data)
    cell = fastrnn.LSTMCell(5, 8, layer_norm=True, backend=backend, seed=3, dtype=np.float64)
    layer = fastrnn.LSTM(5, 8, layer_norm=True, backend=backend, dtype=np.float64)
    layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    x = np.random.default_rng(2).standard_normal((3, 5))
    h, c = cell(x)
    _, (h_n, c_n) = layer(x[None])
    assert_close(h, h_n[0], np.float64, "h")
    assert_close(c, c_n[0], np.float64, "c")


def test_clear_errors():
    with pytest.raises(ValueError, match="layer_norm: not defined for the GRU with "
                                         "reset_after=False"):
        fastrnn.GRU(3, 4, reset_after=False, layer_norm=True)
    with pytest.raises(ValueError, match=r"zoneout: expected a probability in \[0, 1\], "
                                         "got 1.5"):
        fastrnn.LSTM(3, 4, zoneout=1.5)
    with pytest.raises(TypeError, match="layer_norm: expected True or False"):
        fastrnn.RNN(3, 4, layer_norm=1)
    x, weights, h0, c0 = _problem("lstm", 2, 2, 3, 4)
    with pytest.raises(ValueError, match=r"weights\[0\]: expected the fields"):
        F.rnn("lstm", x, [weights[0]._replace(ln_c=None)])
    onnx = pytest.importorskip("onnx")
    from fastrnn.onnx import export
    with pytest.raises(TypeError, match="cannot write a layer_norm=True layer"):
        export(fastrnn.LSTM(3, 4, layer_norm=True), "/dev/null")
    del onnx


@pytest.mark.parametrize("kind,kw", [("LSTM", {}), ("GRU", {}), ("RNN", {}),
                                     ("LSTM", {"proj_size": 3})],
                         ids=["lstm", "gru", "rnn", "lstm-proj"])
def test_torch_layers_with_layer_norm_and_zoneout(kind, kw):
    """fastrnn.torch's layers take the same options: the gains are parameters after torch's
    (state_dict names as the native layer's), eval equals the native layer, every
    gradient passes gradcheck, training masks come from torch's generator."""
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    torch.manual_seed(0)
    m = getattr(ft, kind)(5, 8, num_layers=2, bidirectional=True, layer_norm=True,
                          zoneout=0.2, **kw).double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("ln_"):
                p.add_(torch.rand_like(p) * 0.4 - 0.2)
    assert "layer_norm=True, zoneout=0.2" in repr(m)
    native = getattr(fastrnn, kind)(5, 8, num_layers=2, bidirectional=True, layer_norm=True,
                                    zoneout=0.2, dtype=np.float64, backend="cpu", **kw)
    assert set(native.state_dict()) == set(m.state_dict())
    native.load_state_dict({k: v.detach().numpy() for k, v in m.state_dict().items()})
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    m.eval()
    native.eval()
    assert_close(m(x)[0].detach().numpy(), native(x.numpy())[0], np.float64, "eval output")
    m.train()
    torch.manual_seed(1)
    y1 = m(x)[0]
    torch.manual_seed(1)
    assert torch.equal(y1, m(x)[0])
    small = getattr(ft, kind)(3, 4, layer_norm=True, zoneout=0.3, **kw).double().eval()
    names = [n for n, _ in small.named_parameters()]
    xx = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, *ps: torch.func.functional_call(small, dict(zip(names, ps)), (a,))[0],
        (xx, *[p.detach().requires_grad_() for p in small.parameters()]),
        check_batched_grad=False)


def test_torch_layer_with_layer_norm_under_torch_compile_and_export():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    torch._dynamo.reset()
    lstm = ft.LSTM(4, 6, layer_norm=True).double()
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    eager = lstm(x)[0]
    compiled = torch.compile(lambda a: lstm(a)[0], fullgraph=True)(x)
    torch.testing.assert_close(compiled, eager)
    with pytest.raises(RuntimeError, match="cannot export a layer with layer_norm=True"):
        torch.export.export(lstm, (x,))


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_torch_cells_with_layer_norm_and_zoneout(kind):
    """fastrnn.torch's cells: the gains without a layer suffix, eval equal to the native
    cell, masks from torch's generator in training, gradcheck (eval)."""
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    torch.manual_seed(0)
    m = getattr(ft, kind)(4, 6, layer_norm=True, zoneout=0.3).double()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("ln_"):
                p.add_(torch.rand_like(p) * 0.4 - 0.2)
    native = getattr(fastrnn, kind)(4, 6, layer_norm=True, zoneout=0.3, dtype=np.float64,
                                    backend="cpu")
    assert set(native.state_dict()) == set(m.state_dict())
    native.load_state_dict({k: v.detach().numpy() for k, v in m.state_dict().items()})

    def first(r):
        return r[0] if isinstance(r, tuple) else r
    x = torch.randn(3, 4, dtype=torch.float64)
    m.eval()
    native.eval()
    assert_close(first(m(x)).detach().numpy(), first(native(x.numpy())), np.float64,
                 "eval step")
    m.train()
    torch.manual_seed(3)
    a = first(m(x))
    torch.manual_seed(3)
    assert torch.equal(a, first(m(x)))
    m.eval()
    names = [n for n, _ in m.named_parameters()]
    assert torch.autograd.gradcheck(
        lambda a, *ps: first(torch.func.functional_call(m, dict(zip(names, ps)), (a,))),
        (x.clone().requires_grad_(), *[p.detach().requires_grad_() for p in m.parameters()]),
        check_batched_grad=False)


@pytest.mark.parametrize("backend", numpy_backends())
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_reset_before", "rnn_tanh"])
@pytest.mark.parametrize("T,B", [(0, 3), (4, 0)])
def test_an_empty_batch_or_sequence(backend, cell, T, B):
    """No rows or no steps (PyTorch accepts an empty batch): outputs of the right shapes,
    the states passed through, every weight gradient zero."""
    x, weights, h0, c0 = _problem(cell, T, B, 5, 8, 2, 2, np.float32, seed=1,
                                  layer_norm=cell != "gru_reset_before")
    out, h_n, c_n, ctx = F.rnn(cell, x, weights, h0, c0, num_layers=2, bidirectional=True,
                               zoneout=0.3, rng=np.random.default_rng(0), backend=backend)
    assert out.shape == (T, B, 16) and h_n.shape == h0.shape
    dh = np.random.default_rng(2).standard_normal(h_n.shape).astype(np.float32)
    dx, dh0, _, dws = F.rnn_backward(ctx, np.ones_like(out), dh)
    assert dx.shape == x.shape
    if T == 0:
        np.testing.assert_array_equal(h_n, h0)
        np.testing.assert_array_equal(dh0, dh)
    for w, g in zip(weights, dws):
        assert list(g.present()) == list(w.present())
        assert all(not np.any(a) for a in g.present().values())


@pytest.mark.parametrize("cell,proj_size,layer_norm", CASES,
                         ids=[f"{c}-P{p}-ln{int(n)}" for c, p, n in CASES])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_cpu_loops_split_rows_between_threads(cell, proj_size, layer_norm, reverse, packed):
    """The cpu loops with the batch in uneven row blocks, one a thread (small layers run
    on one thread), the per-step products on packed weights and on the weights as they
    are: equal to the reference, forward and every gradient, with lengths (one of them
    zero) and zoneout."""
    pytest.importorskip("numba")
    from fastrnn.kernels import reference
    from fastrnn.kernels.contract import Sequence, State
    from fastrnn.kernels.cpu import _norm
    T, B, I, H = 6, 5, 4, 16
    x, weights, h0, c0 = _problem(cell, T, B, I, H, seed=3, proj_size=proj_size,
                                  layer_norm=layer_norm)
    rng = np.random.default_rng(8)
    S = proj_size or H
    seq = Sequence(np.array([6, 2, 0, 5, 6]), reverse)
    zoneout = (rng.random((T, B, S)) < 0.3).astype(np.float64)
    state = State(h0[0], None if c0 is None else c0[0])
    dy = rng.standard_normal((T, B, S))
    dstate = State(rng.standard_normal((B, S)), None if c0 is None else
                   rng.standard_normal((B, H)))
    want_y, want_state, saved = reference.forward(cell, x, state, weights[0], seq, True,
                                                  zoneout)
    want = reference.backward(cell, saved, dy, dstate)
    blocks = np.array([0, 1, 3, 5])
    y, got_state, kept = _norm.forward(cell, x, state, weights[0], seq, True, zoneout, blocks,
                                       packed)
    got = _norm.backward(cell, kept, dy, dstate, blocks, packed)
    assert_close(y, want_y, np.float64, "output")
    for name, a, b in [("h_n", got_state.h, want_state.h), ("c_n", got_state.c, want_state.c),
                       ("dx", got[0], want[0]), ("dh0", got[1].h, want[1].h),
                       ("dc0", got[1].c, want[1].c)] + [
            (f, got[2].present()[f], g) for f, g in want[2].present().items()]:
        if b is None:
            assert a is None, name
        else:
            assert_close(a, b, np.float64, name)


UNIT_CASES = [c for c in CASES if c[1] == 0 and c[0] != "gru_reset_before"]


@pytest.mark.parametrize("cell,proj_size,layer_norm", UNIT_CASES,
                         ids=[f"{c}-P{p}-ln{int(n)}" for c, p, n in UNIT_CASES])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("units", [[0, 16, 48], [0, 16, 32, 48]], ids=["2blocks", "3blocks"])
@pytest.mark.parametrize("reverse", [False, True])
def test_cpu_inference_splits_units_between_threads(cell, proj_size, layer_norm, dtype, units,
                                                    reverse):
    """The cpu backend's inference loop for one or two rows, the hidden units in uneven
    blocks (one a thread; more blocks than threads too), the norms' statistics combined
    across blocks: equal to the reference, with lengths and zoneout factors."""
    pytest.importorskip("numba")
    from fastrnn.kernels import reference
    from fastrnn.kernels.contract import Sequence, State
    from fastrnn.kernels.cpu import _norm_split
    T, B, I, H = 6, 2, 5, 48
    x, weights, h0, c0 = _problem(cell, T, B, I, H, dtype=dtype, seed=4,
                                  layer_norm=layer_norm)
    rng = np.random.default_rng(6)
    seq = Sequence(np.array([6, 3]), reverse)
    zoneout = rng.random((T, B, H)).astype(dtype)
    state = State(h0[0], None if c0 is None else c0[0])
    want_y, want_state, _ = reference.forward(cell, x, state, weights[0], seq, False, zoneout)
    y, got_state, kept = _norm_split.forward(cell, x, state, weights[0], seq, zoneout,
                                             np.array(units))
    assert kept is None
    assert_close(y, want_y, dtype, "output")
    assert_close(got_state.h, want_state.h, dtype, "h_n")
    if c0 is not None:
        assert_close(got_state.c, want_state.c, dtype, "c_n")


@pytest.mark.parametrize("cls", ["LSTM", "GRU"])
def test_cpu_layer_inference_at_batch_one_takes_the_unit_split(cls):
    """A layer-normalised layer with zoneout in eval mode at batch 1 and 2 (weights large
    enough to share between threads) takes the unit-split loop and equals the reference
    backend; training and larger batches take the batch split."""
    pytest.importorskip("numba")
    from fastrnn.kernels import cpu
    from fastrnn.kernels.contract import Weights
    T, H = 150, 160
    layer = getattr(fastrnn, cls)(24, H, layer_norm=True, zoneout=0.2, backend="cpu")
    ref = getattr(fastrnn, cls)(24, H, layer_norm=True, zoneout=0.2, backend="numpy")
    ref.load_state_dict(layer.state_dict())
    layer.eval()
    ref.eval()
    rng = np.random.default_rng(2)
    for B in (1, 2):
        x = rng.standard_normal((40, B, 24)).astype(np.float32)
        got, want = layer(x), ref(x)
        assert_close(got[0], want[0], np.float32, "output")
    weights = Weights(None, np.zeros(((3 if cls == "GRU" else 4) * H, H), np.float32))
    cell = cls.lower()
    if cpu.num_threads() > 1 and cpu.usable_cpus() > 1:
        assert cpu._normed_units(cell, (T, 1, 24), weights) is not None
    assert cpu._normed_units(cell, (T, 32, 24), weights) is None
