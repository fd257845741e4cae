"""fastrnn.torch against torch.nn: parity in float64 over the option grid, gradcheck,
convert, torch.compile, save/load, training steps, dropout seeding and every error."""

import io
import itertools

import pytest

torch = pytest.importorskip("torch")

import fastrnn.torch as ft  # noqa: E402  (after the skip: it imports torch)
from fastrnn.torch import _ops  # noqa: E402

PAIRS = {"rnn_tanh": (ft.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
         "rnn_relu": (ft.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
         "lstm": (ft.LSTM, torch.nn.LSTM, {}), "gru": (ft.GRU, torch.nn.GRU, {}),
         "lstm_proj": (ft.LSTM, torch.nn.LSTM, {"proj_size": 4})}
T, B, I, H = 5, 4, 3, 6
GRID = list(itertools.product(sorted(PAIRS), [1, 2], [False, True], [False, True],
                              [True, False], [False, True], [False, True]))


def _ids(case):
    cell, L, bi, bf, bias, packed, hx = case
    return (f"{cell}-L{L}-{'bi' if bi else 'uni'}-{'bf' if bf else 'tm'}-"
            f"{'bias' if bias else 'nobias'}-{'packed' if packed else 'dense'}-"
            f"{'hx' if hx else 'nohx'}")


def _pair(cell, dtype=torch.float64, **kw):
    ours_cls, torch_cls, extra = PAIRS[cell]
    ours = ours_cls(I, H, **kw, **extra).to(dtype)
    ref = torch_cls(I, H, **kw, **extra).to(dtype)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _close(a, b, what, tol=1e-10):
    a, b = a.detach(), b.detach()
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape)
    scale = max(b.abs().max().item(), 1e-30)
    assert (a - b).abs().max().item() / scale < tol, what


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


@pytest.mark.parametrize("case", GRID, ids=_ids)
def test_matches_torch_nn(case):
    cell, L, bi, bf, bias, packed, given = case
    torch.manual_seed(hash(case) % 2**31)
    ours, ref = _pair(cell, num_layers=L, bidirectional=bi, batch_first=bf, bias=bias)
    D, lstm = 2 if bi else 1, cell.startswith("lstm")
    S = PAIRS[cell][2].get("proj_size") or H  # the state's size
    x = torch.randn((B, T, I) if bf else (T, B, I), dtype=torch.float64)
    states = [torch.randn(L * D, B, size, dtype=torch.float64)
              for size in ([S, H] if lstm else [S])]
    results = []
    for model in (ours, ref):
        xs = _leaves(x, *states)
        inp = xs[0]
        if packed:
            lengths = torch.tensor([3, T, 1, 4])  # unsorted
            inp = torch.nn.utils.rnn.pack_padded_sequence(inp, lengths, batch_first=bf,
                                                          enforce_sorted=False)
        hx = None if not given else tuple(xs[1:]) if lstm else xs[1]
        out, hn = model(inp, hx)
        if packed:
            assert isinstance(out, torch.nn.utils.rnn.PackedSequence)
            out_data = out.data
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=bf)
        else:
            out_data = out
        hs = list(hn) if lstm else [hn]
        g = torch.Generator().manual_seed(1)
        loss = (out_data * torch.randn(out_data.shape, generator=g, dtype=out.dtype)).sum()
        for h in hs:
            loss = loss + (h * torch.randn(h.shape, generator=g, dtype=h.dtype)).sum()
        loss.backward()
        results.append((out, hs, xs, [p.grad for p in model.parameters()]))
    (o1, h1, x1, p1), (o2, h2, x2, p2) = results
    _close(o1, o2, "output")
    for a, b in zip(h1, h2):
        _close(a, b, "final state")
    _close(x1[0].grad, x2[0].grad, "grad input")
    if given:
        for a, b in zip(x1[1:], x2[1:]):
            _close(a.grad, b.grad, "grad hx")
    for (name, _), a, b in zip(ours.named_parameters(), p1, p2):
        _close(a, b, f"grad {name}")


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_relu", "rnn_tanh"])
@pytest.mark.parametrize("unbatched", [False, True])
def test_step_cells_match_torch(cell, unbatched):
    ours_cls, torch_cls, kw = {
        "rnn_tanh": (ft.RNNCell, torch.nn.RNNCell, {"nonlinearity": "tanh"}),
        "rnn_relu": (ft.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
        "lstm": (ft.LSTMCell, torch.nn.LSTMCell, {}),
        "gru": (ft.GRUCell, torch.nn.GRUCell, {})}[cell]
    torch.manual_seed(3)
    ours, ref = ours_cls(I, H, **kw).double(), torch_cls(I, H, **kw).double()
    ref.load_state_dict(ours.state_dict())
    assert isinstance(ours, torch_cls) and repr(ours) == repr(ref)
    lstm = cell == "lstm"
    xs = torch.randn(3, *(() if unbatched else (B,)), I, dtype=torch.float64)
    grads = []
    for model in (ours, ref):
        x = xs.clone().requires_grad_()
        state = None
        for t in range(3):  # three steps, BPTT through all of them
            state = model(x[t], state)
        (state[0].sum() + 2 * state[1].sum() if lstm else state.sum()).backward()
        grads.append([x.grad] + [p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        _close(a, b, "gradient")


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru", "lstm_proj"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("given", [False, True])
def test_unbatched_input_matches_torch_nn(cell, batch_first, given):
    """A 2-D input ``[T,I]`` of several steps, in either layout, with or without states."""
    torch.manual_seed(11)
    ours, ref = _pair(cell, num_layers=2, bidirectional=True, batch_first=batch_first)
    lstm, S = cell.startswith("lstm"), PAIRS[cell][2].get("proj_size") or H
    x = torch.randn(T, I, dtype=torch.float64)
    states = [torch.randn(4, size, dtype=torch.float64) for size in ([S, H] if lstm else [S])]
    results = []
    for model in (ours, ref):
        xs = _leaves(x, *states)
        hx = None if not given else tuple(xs[1:]) if lstm else xs[1]
        out, hn = model(xs[0], hx)
        hs = list(hn) if lstm else [hn]
        (out.square().sum() + sum(h.sum() for h in hs)).backward()
        results.append((out, hs, [t.grad for t in xs]))
    (o1, h1, g1), (o2, h2, g2) = results
    _close(o1, o2, "output")
    for a, b in zip(h1 + (g1 if given else g1[:1]), h2 + (g2 if given else g2[:1])):
        _close(a, b, "state or gradient")


def _op_args(cell, layout, bidirectional=False, proj_size=0, given=False, lengths=None):
    """Arguments of ``fastrnn::rnn`` with ``x [T,B,I]`` laid out as ``layout`` says."""
    torch.manual_seed(3)
    D, S = 2 if bidirectional else 1, proj_size or H
    shapes = {"contiguous": (T, B, I), "transposed": (B, T, I), "permuted": (I, T, B),
              "sliced": (2 * T, B, I + 2), "strided": (T, 2 * B, I)}
    base = torch.randn(shapes[layout], dtype=torch.float64)
    x = {"contiguous": base, "transposed": base.transpose(0, 1),
         "permuted": base.permute(1, 2, 0), "sliced": base[::2, :, 1:I + 1],
         "strided": base[:, ::2]}[layout].requires_grad_()
    module = ft.LSTM(I, H, bidirectional=bidirectional, proj_size=proj_size) \
        if cell == "lstm" else ft.GRU(I, H, bidirectional=bidirectional)
    weights = [p.detach().double().requires_grad_() for p in module.parameters()]
    hx = torch.randn(D, B, S, dtype=torch.float64, requires_grad=given)
    cx = torch.randn(D, B, H, dtype=torch.float64, requires_grad=given) \
        if cell == "lstm" else torch.empty(0, dtype=torch.float64)
    lens = torch.tensor(lengths) if lengths else torch.empty(0, dtype=torch.int64)
    config = _ops.Config(cell, bidirectional=bidirectional, training=True, save=True,
                         proj_size=proj_size)
    return x, hx, cx, weights, lens, config.encode()


# (test_aot_dispatch_dynamic compares every output of two runs, and the operator's fourth
# output is a fresh handle each run: compiled runs are checked against eager below instead)
_OPCHECK = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("case", [
    ("lstm", "contiguous", {}), ("gru", "transposed", {}), ("lstm", "permuted", {}),
    ("gru", "sliced", {"bidirectional": True}), ("lstm", "strided", {"given": True}),
    ("lstm", "transposed", {"proj_size": 4, "bidirectional": True}),
    ("gru", "contiguous", {"lengths": [5, 2, 4, 1]}),
], ids=lambda c: f"{c[0]}-{c[1]}-{'-'.join(sorted(c[2]))}")
def test_opcheck_forward_and_backward_ops(case):
    """The fake kernels agree with the real ones (shapes, dtypes, strides) for inputs of any
    layout; the backward op is checked on a handle of a real forward."""
    cell, layout, kw = case
    args = _op_args(cell, layout, **kw)
    torch.library.opcheck(_ops.rnn_op, args, test_utils=_OPCHECK)
    out, h_n, c_n, handle = _ops.rnn_op(*args)
    x, hx, cx, weights = args[:4]
    grads = (torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n))
    torch.library.opcheck(_ops.rnn_backward_op, (handle, *grads, x, hx, cx, weights),
                          test_utils=("test_schema", "test_faketensor"))
    real = _ops.rnn_backward_op(handle, *grads, x, hx, cx, weights)
    assert all(g.is_contiguous() for g in real)


def test_torch_compile_inductor_on_transposed_and_permuted_inputs():
    """Layers fed a transposed or a permuted tensor (proj_size too), compiled with inductor:
    forward and every gradient equal eager."""
    torch._dynamo.reset()
    torch.manual_seed(4)
    lstm = ft.LSTM(6, 10, 2, batch_first=True).double()
    gru = ft.GRU(10, 7).double()
    proj = ft.LSTM(7, 9, 2, proj_size=4).double()

    def model(x):
        y, _ = lstm(x)
        y, h = gru(y.transpose(0, 1))
        z, (hp, _) = proj(y.permute(1, 0, 2).transpose(0, 1))
        return z.square().sum() + h.sum() + hp.sum()

    x = torch.randn(4, 9, 6, dtype=torch.float64)
    params = [*lstm.parameters(), *gru.parameters(), *proj.parameters()]
    results = []
    for fn in (torch.compile(model, fullgraph=True), model):
        (xs,) = _leaves(x)
        loss = fn(xs)
        grads = torch.autograd.grad(loss, [xs] + params)
        results.append((loss, grads))
    (l1, g1), (l2, g2) = results
    _close(l1, l2, "compiled loss")
    for a, b in zip(g1, g2):
        _close(a, b, "compiled gradient")


@pytest.mark.parametrize("training", [True, False])
def test_dropout_one_matches_torch_nn(training):
    """dropout=1.0, as torch accepts it: every unit between layers dropped in training, no
    effect in eval mode; outputs and gradients equal torch.nn's."""
    torch.manual_seed(2)
    ours, ref = _pair("gru", num_layers=2, dropout=1.0)
    for m in (ours, ref):
        m.train(training)
    x = torch.randn(T, B, I, dtype=torch.float64)
    results = []
    for model in (ours, ref):
        (xs,) = _leaves(x)
        out, hn = model(xs)
        (out.square().sum() + hn.sum()).backward()
        results.append((out, hn, [p.grad for p in model.parameters()]))
    (o1, h1, g1), (o2, h2, g2) = results
    _close(o1, o2, "output")
    _close(h1, h2, "final state")
    for a, b in zip(g1, g2):
        _close(a, b, "parameter gradient")


def test_cells_check_like_torch_and_ignore_the_training_flag():
    """torch's messages and exception types for a cell's bad input; a cell (no dropout)
    gives the same result in training and eval mode; a sequence of no steps is refused."""
    for ours_cls, torch_cls, lstm in ((ft.GRUCell, torch.nn.GRUCell, False),
                                      (ft.LSTMCell, torch.nn.LSTMCell, True)):
        ours, ref = ours_cls(3, 4).double(), torch_cls(3, 4).double()
        ref.load_state_dict(ours.state_dict())
        cases = [(torch.randn(2, 5), None), (torch.randn(2, 3), torch.randn(5, 4)),
                 (torch.randn(2, 3), torch.randn(2, 6)), (torch.randn(3), torch.randn(2, 4)),
                 (torch.randn(2, 3), torch.randn(4)), (torch.randn(2, 2, 3), None),
                 (torch.randn(2, 3), torch.randn(1, 2, 4))]
        for x, h in cases:
            x = x.double()
            if h is not None:
                h = h.double()
                h = (h, h.clone()) if lstm else h
            errors = []
            for m in (ours, ref):
                with pytest.raises((RuntimeError, ValueError)) as err:
                    m(x, h)
                errors.append((err.type, str(err.value)))
            assert errors[0] == errors[1]
        x = torch.randn(2, 3, dtype=torch.float64)
        a = ours.train()(x)
        b = ours.eval()(x)
        for u, v in zip(a if lstm else (a,), b if lstm else (b,)):
            assert torch.equal(u, v)
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
        ft.LSTM(I, H)(torch.randn(0, B, I))
    packed = torch.nn.utils.rnn.pack_padded_sequence(  # lengths beyond the 3 padded steps
        torch.randn(3, 2, I), torch.tensor([5, 2]), enforce_sorted=False)
    with pytest.raises(ValueError, match="batch_sizes add up to 7 steps of data, but whose "
                                         "data has 5"):
        ft.LSTM(I, H)(packed)


@pytest.mark.parametrize("batched", [True, False])
def test_cells_of_no_units_give_torchs_empty_states(batched):
    for ours_cls, torch_cls in ((ft.RNNCell, torch.nn.RNNCell), (ft.GRUCell, torch.nn.GRUCell),
                                (ft.LSTMCell, torch.nn.LSTMCell)):
        ours, ref = ours_cls(3, 0).double(), torch_cls(3, 0).double()
        x = torch.randn(*((2,) if batched else ()), 3, dtype=torch.float64)
        results = []
        for m in (ours, ref):
            (xs,) = _leaves(x)
            out = m(xs)
            outs = out if isinstance(out, tuple) else (out,)
            sum(o.sum() for o in outs).backward()
            results.append(([o.shape for o in outs], xs.grad,
                            [p.grad.shape for p in m.parameters()]))
        assert results[0][0] == results[1][0] and results[0][2] == results[1][2]
        assert torch.equal(results[0][1], results[1][1])


def test_classes_state_dicts_and_repr_are_torchs():
    for cell, (ours_cls, torch_cls, kw) in PAIRS.items():
        m = ours_cls(I, H, num_layers=2, bidirectional=True, **kw)
        assert isinstance(m, torch_cls)
        assert repr(m) == repr(torch_cls(I, H, num_layers=2, bidirectional=True, **kw))
        assert list(m.state_dict()) == list(torch_cls(I, H, num_layers=2, bidirectional=True,
                                                      **kw).state_dict())
        m.flatten_parameters()


def test_gradcheck_float64():
    torch.manual_seed(0)
    lstm = ft.LSTM(2, 3, num_layers=2, bidirectional=True).double()
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    params = list(lstm.parameters())

    def f(x, h, c, *ws):
        with torch.nn.utils.stateless._reparametrize_module(
                lstm, dict(zip([n for n, _ in lstm.named_parameters()], ws))):
            out, (hn, cn) = lstm(x, (h, c))
        return out, hn, cn

    assert torch.autograd.gradcheck(f, (x, h, c, *params), eps=1e-6, atol=1e-8)


def test_double_backward_is_a_clear_error():
    gru = ft.GRU(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    out, _ = gru(x)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_no_grad_and_inference_mode_save_nothing_and_eval_still_differentiates():
    lstm = ft.LSTM(I, H, num_layers=2, dropout=0.5)
    x = torch.randn(T, B, I)
    before = len(_ops._contexts)
    with torch.no_grad():
        out, _ = lstm(x)
    with torch.inference_mode():
        lstm.eval()(x)
    assert len(_ops._contexts) == before and not out.requires_grad
    lstm.eval()  # as in torch: eval mode without no_grad still builds the graph
    out, _ = lstm(x)
    out.sum().backward()
    assert lstm.weight_hh_l1.grad is not None
    del out
    assert len(_ops._contexts) == before  # freed with the graph


def test_dropout_follows_torch_manual_seed():
    lstm = ft.LSTM(I, H, num_layers=3, dropout=0.5)
    x = torch.randn(T, B, I)
    torch.manual_seed(7)
    a, _ = lstm(x)
    torch.manual_seed(7)
    b, _ = lstm(x)
    c, _ = lstm(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    lstm.eval()
    d, _ = lstm(x)
    e, _ = lstm(x)
    assert torch.equal(d, e)


def _small_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(20, 4), torch.nn.GRU(4, 8),
                               _Last(), torch.nn.Linear(8, 20)).double()


class _Last(torch.nn.Module):
    def forward(self, pair):
        return pair[0]


def test_convert_swaps_in_place_and_keeps_everything():
    model = torch.nn.Sequential(torch.nn.LSTM(I, H, num_layers=2), _Last(),
                                torch.nn.Linear(H, 2)).double().eval()
    cell = torch.nn.GRUCell(I, H)
    model.add_module("cell", cell)
    x = torch.randn(T, B, I, dtype=torch.float64)
    want = model[:3](x)
    params = list(model.parameters())
    assert ft.convert(model) is model
    assert type(model[0]) is ft.LSTM and type(model.cell) is ft.GRUCell
    assert all(a is b for a, b in zip(params, model.parameters()))
    assert not model.training and model[0].weight_ih_l0.dtype == torch.float64
    _close(model[:3](x), want, "converted output")
    projected = torch.nn.LSTM(I, H, proj_size=2).double()
    want = projected(x)[0]
    assert type(ft.convert(projected)) is ft.LSTM
    _close(projected(x)[0], want, "converted LSTM with proj_size")


def test_twenty_training_steps_equal_torch():
    ours, ref = _small_model(0), _small_model(0)
    ft.convert(ours)
    opts = [torch.optim.Adam(m.parameters(), lr=0.01) for m in (ours, ref)]
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        tokens = torch.randint(0, 20, (6, 3), generator=g)
        for model, opt in zip((ours, ref), opts):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(tokens[:-1]).reshape(-1, 20),
                                                     tokens[1:].reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert (a - b).abs().max().item() < 1e-8, name


def test_torch_save_load_and_state_dict_exchange():
    model = ft.convert(_small_model(1))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    with torch.serialization.safe_globals(ft.SAFE_GLOBALS + [
            torch.nn.Sequential, torch.nn.Embedding, torch.nn.Linear, _Last, set]):
        loaded = torch.load(buf, weights_only=True)
    assert type(loaded[1]) is ft.GRU
    tokens = torch.randint(0, 20, (5, 2))
    _close(loaded(tokens), model(tokens), "reloaded output")
    plain = _small_model(2)
    plain.load_state_dict(model.state_dict())
    _close(plain(tokens), model(tokens), "torch.nn with fastrnn's weights")


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_forward_and_backward(backend):
    """(inductor, torch.compile's default, generates and compiles C++: ~25 s here)"""
    torch._dynamo.reset()
    lstm = ft.LSTM(I, H, num_layers=2, bidirectional=True).double()
    ref = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True).double()
    ref.load_state_dict(lstm.state_dict())
    compiled = torch.compile(lstm, fullgraph=True, backend=backend)
    x = torch.randn(T, B, I, dtype=torch.float64)
    xs = _leaves(x, x)
    out, (hn, _) = compiled(xs[0])
    (out.sum() + hn.sum()).backward()
    out2, (hn2, _) = ref(xs[1])
    (out2.sum() + hn2.sum()).backward()
    _close(out, out2, "compiled output")
    _close(xs[0].grad, xs[1].grad, "compiled grad input")
    for a, b in zip(lstm.parameters(), ref.parameters()):
        _close(a.grad, b.grad, "compiled grad weight")


@pytest.mark.parametrize("bad", [
    (lambda m: m(torch.randn(T, B, I + 1)), RuntimeError, "input.size"),
    (lambda m: m(torch.randn(T, B, I), torch.randn(2, B, H)), RuntimeError,
     "Expected hidden size"),
    (lambda m: m(torch.randn(T, B, I), torch.randn(B, H)), RuntimeError, "should also be 3-D"),
    (lambda m: m(torch.randn(2, T, B, I)), ValueError, "Expected input to be 2D or 3D"),
    (lambda m: m(torch.randn(T, B, I, dtype=torch.float16)), TypeError,
     "torch.float16 is not supported"),
    (lambda m: m(torch.randn(T, B, I, dtype=torch.bfloat16)), TypeError,
     "torch.bfloat16 is not supported"),
    (lambda m: m(torch.randn(T, B, I, dtype=torch.float64)), ValueError,
     r"input dtype \(torch.float64\) does not match weight dtype"),
    (lambda m: m.half()(torch.randn(T, B, I, dtype=torch.float16)), TypeError,
     "torch.float16 is not supported"),
    (lambda m: m(torch.randn(T, B, I, device="meta")), RuntimeError,
     "device meta is not supported"),
], ids=["input-size", "hx-size", "hx-rank", "input-rank", "float16", "bfloat16",
        "dtype-mismatch", "half-model", "meta"])
def test_errors_like_torch(bad):
    fn, kind, match = bad
    with pytest.raises(kind, match=match):
        fn(ft.GRU(I, H))


def _gpu_reason():
    import fastrnn
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    rep = fastrnn.backends()["gpu"]
    return None if rep["available"] else f"gpu: {rep['reason']}"


@pytest.mark.skipif(_gpu_reason() is not None, reason=str(_gpu_reason()))
@pytest.mark.parametrize("cell", sorted(PAIRS))
def test_cuda_tensors_match_torch_nn(cell):
    """On CUDA tensors the layer runs the gpu backend on torch's stream; outputs, states and
    every gradient equal torch.nn's (cuDNN) in float64."""
    torch.manual_seed(5)
    ours, ref = _pair(cell, num_layers=2, bidirectional=True)
    ours, ref = ours.cuda(), ref.cuda()
    x = torch.randn(T, B, I, dtype=torch.float64, device="cuda")
    results = []
    for model in (ours, ref):
        (inp,) = _leaves(x)
        out = model(inp)
        y = out[0]
        (y.square().sum() + sum(s.sum() for s in (out[1] if cell == "lstm" else (out[1],))
                                )).backward()
        results.append((y, inp.grad, [p.grad for p in model.parameters()]))
    (y0, g0, p0), (y1, g1, p1) = results
    assert y0.device.type == "cuda"
    _close(y0, y1, "output", 1e-9)
    _close(g0, g1, "input gradient", 1e-9)
    for a, b in zip(p0, p1):
        _close(a, b, "parameter gradient", 1e-9)


@pytest.mark.parametrize("Module", ["LSTM", "LSTMCell"])
def test_a_weight_changed_in_place_before_backward_is_torchs_error(Module):
    """The bridge keeps no copies: autograd's saved tensors catch a change in place."""
    m = getattr(ft, Module)(3, 5).double()
    x = torch.randn(4, 3, dtype=torch.float64) if Module.endswith("Cell") else \
        torch.randn(2, 4, 3, dtype=torch.float64)
    out = m(x)[0]
    with torch.no_grad():
        m.weight_hh.add_(1) if Module.endswith("Cell") else m.weight_hh_l0.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell"])
def test_a_cell_under_torch_compile_takes_the_operator_and_matches_torch(name):
    """Eager cells run their step straight on the kernels; compiled ones trace the custom
    operator: the same numbers and gradients either way."""
    torch._dynamo.reset()
    cell = getattr(ft, name)(I, H).double()
    ref = getattr(torch.nn, name)(I, H).double()
    ref.load_state_dict(cell.state_dict())
    compiled = torch.compile(cell, fullgraph=True, backend="aot_eager")
    x = torch.randn(B, I, dtype=torch.float64)
    xs = _leaves(x, x)
    outs = [m(v) for m, v in ((compiled, xs[0]), (ref, xs[1]))]
    for o, v in zip(outs, xs):
        (o[0] if isinstance(o, tuple) else o).sum().backward()
    _close(outs[0][0] if name == "LSTMCell" else outs[0],
           outs[1][0] if name == "LSTMCell" else outs[1], "compiled cell output")
    _close(xs[0].grad, xs[1].grad, "compiled cell grad input")
    for a, b in zip(cell.parameters(), ref.parameters()):
        _close(a.grad, b.grad, "compiled cell grad weight")
