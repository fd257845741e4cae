"""Low-precision inference: the formats, the reference (the float32 layer with the weights
read back) against PyTorch, the cpu backend's kernels against the reference for every cell
and option, accuracy against the float32 layer, the layers' and cells' API, save and load."""

import os

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from fastrnn.kernels import quantize as Q
from fastrnn.kernels.contract import Sequence, State
from conftest import ALL_CELLS, backend_param, random_problem, rel_err

FORMATS = ["int8", "bfloat16"]
# The cpu kernels against the reference: bfloat16 weights are used exactly (float32's
# tolerance); int8 kernels also round the state to 15 bits a row in the product
TOL = {"int8": 2e-3, "bfloat16": 2e-4}


def _quantized(weights, fmt):
    return [w._replace(**{f: Q.quantize(getattr(w, f), fmt) for f in Q.FIELDS
                          if getattr(w, f) is not None}) for w in weights]


# -- the formats ----------------------------------------------------------------------------

def test_int8_rows_scale_and_round():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((7, 33)) * rng.uniform(0.01, 3, (7, 1))).astype(np.float32)
    w[3] = 0  # a row of zeros
    q = Q.quantize(w, "int8")
    assert q.values.dtype == np.int8 and q.scale.dtype == np.float32
    assert np.abs(q.values).max() == 127 and q.values.min() >= -127
    peak = np.abs(w).max(axis=1)
    np.testing.assert_allclose(q.scale[peak > 0], peak[peak > 0] / 127, rtol=1e-6)
    assert q.scale[3] == 1 and not q.values[3].any()
    back = q.dequantize()
    assert back.dtype == np.float32 and back.shape == w.shape
    # round to nearest: within half a step of each row's scale
    assert (np.abs(back - w) <= q.scale[:, None] * 0.5 * (1 + 1e-6)).all()


def test_bfloat16_rounds_as_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((9, 40)) * np.exp(rng.uniform(-20, 20, (9, 40)))).astype(
        np.float32)
    w[0, :4] = [0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8]  # ties: to even
    q = Q.quantize(w, "bfloat16")
    want = torch.from_numpy(w).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(q.values, want)
    np.testing.assert_array_equal(q.dequantize(),
                                  torch.from_numpy(w).to(torch.bfloat16).float().numpy())
    assert q.scale is None


def test_quantize_refuses_bad_weights():
    w = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="format: expected one of"):
        Q.quantize(w, "int4")
    with pytest.raises(ValueError, match="expected a float32 matrix, got float64"):
        Q.quantize(w.astype(np.float64), "int8")
    bad = w.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        Q.quantize(bad, "bfloat16", "weight_hh_l0")


# -- the reference ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_reference_runs_the_weights_read_back(fmt):
    """The numpy backend's quantized layer equals its float32 layer on the dequantized
    weights, and PyTorch's float32 layer on them."""
    torch = pytest.importorskip("torch")
    x, weights, h0, c0 = random_problem("lstm", 12, 3, 8, 16, L=2, D=2, dtype=np.float32,
                                        seed=2)
    qw = _quantized(weights, fmt)
    kw = dict(num_layers=2, bidirectional=True, training=False, backend="numpy")
    out, h_n, c_n, _ = F.rnn("lstm", x, qw, h0, c0, **kw)
    back = [Q.dequantized(w) for w in qw]
    out2, h_n2, _, _ = F.rnn("lstm", x, back, h0, c0, **kw)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(h_n, h_n2)
    lstm = torch.nn.LSTM(8, 16, 2, bidirectional=True)
    names = [n for n, _ in lstm.named_parameters()]
    flat = [a for w in back for a in (w.w_ih, w.w_hh, w.b_ih, w.b_hh)]
    lstm.load_state_dict({n: torch.from_numpy(a) for n, a in zip(names, flat)})
    with torch.no_grad():
        y, (h, c) = lstm(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
    assert rel_err(out, y.numpy()) < 2e-5 and rel_err(c_n, c.numpy()) < 2e-5


# -- the cpu kernels against the reference --------------------------------------------------

# (T, B, I, H): the fused low-precision unit-split loop at batch 1 and 2, for a call of
# few rows, and at batch 8 with weights too large for float32 in L2; at batch 16 and 20
# with small weights the batch-split loop on int8 panels (bfloat16: the float32 kernels on
# the weights read back), as for rows that are not whole chunks (int8: of an odd length)
SHAPES = [(9, 1, 32, 32), (6, 2, 64, 64), (4, 12, 32, 32), (20, 8, 32, 384),
          (10, 16, 32, 96), (8, 20, 16, 32), (5, 2, 13, 17)]
PATHS = ["units"] * 4 + ["batch"] * 2 + ["float32"]


def _path(cpu, fmt, T, B, I, H):
    w = _quantized(random_problem("lstm", 1, 1, I, H, dtype=np.float32)[1], fmt)[0]
    if cpu._fused_quantized("lstm", w, T, B, I, H):
        return "units"
    return "batch" if cpu._batch_quantized(w, I, H) else "float32"


def test_shapes_cover_every_path():
    if not fastrnn.backends()["cpu"]["available"]:
        pytest.skip("cpu backend not available")
    from fastrnn.kernels import cpu
    for shape, path in zip(SHAPES, PATHS):
        assert _path(cpu, "int8", *shape) == path, shape
        assert _path(cpu, "bfloat16", *shape) == path.replace("batch", "float32"), shape


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"T{t}B{b}I{i}H{h}" for t, b, i, h in SHAPES])
def test_cpu_matches_reference(fmt, cell, shape, monkeypatch):
    """Every cell, every shape of :data:`SHAPES`; lengths and the reverse direction; one
    thread and two (a call too small to share, then shared)."""
    if not fastrnn.backends()["cpu"]["available"]:
        pytest.skip("cpu backend not available")
    from fastrnn.kernels import cpu, reference
    T, B, I, H = shape
    x, weights, h0, c0 = random_problem(cell, T, B, I, H, dtype=np.float32, seed=3,
                                        scale=1 / np.sqrt(H))  # (the standard initialisation)
    w = _quantized(weights, fmt)[0]
    lengths = np.random.default_rng(4).integers(0, T + 1, B)
    for shared in (False, True):
        if shared:
            monkeypatch.setattr(cpu, "_MIN_WORK_PER_THREAD", 1)
        for seq in (Sequence(), Sequence(lengths, True)):
            state = State(h0[0], None if c0 is None else c0[0])
            want = reference.forward(cell, x, state, w, seq, training=False)
            got = cpu.forward(cell, x, state, w, seq, training=False)
            assert got[2] is None
            assert rel_err(got[0], want[0]) <= TOL[fmt], (shared, seq)
            assert rel_err(got[1].h, want[1].h) <= TOL[fmt]
            if c0 is not None:
                assert rel_err(got[1].c, want[1].c) <= TOL[fmt]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("option", ["proj_size", "layer_norm", "zoneout", "stacked"])
def test_cpu_matches_reference_with_options(fmt, option):
    """Options the fused kernels leave to the float32 path on the weights read back, and a
    stacked bidirectional network with lengths."""
    if not fastrnn.backends()["cpu"]["available"]:
        pytest.skip("cpu backend not available")
    kw = dict(proj_size=6 if option == "proj_size" else 0, layer_norm=option == "layer_norm")
    L, D = (2, 2) if option == "stacked" else (1, 1)
    x, weights, h0, c0 = random_problem("lstm", 7, 4, 10, 16, L=L, D=D, dtype=np.float32,
                                        seed=5, scale=0.3, **kw)
    qw = _quantized(weights, fmt)
    args = dict(num_layers=L, bidirectional=D == 2, training=False,
                zoneout=0.25 if option == "zoneout" else 0.0, lengths=[7, 0, 3, 5])
    want = F.rnn("lstm", x, qw, h0, c0, backend="numpy", **args)
    got = F.rnn("lstm", x, qw, h0, c0, backend="cpu", **args)
    for a, b in zip(got[:3], want[:3]):
        assert rel_err(a, b) <= TOL[fmt]


# -- accuracy against the float32 layer ------------------------------------------------------

@pytest.mark.parametrize("fmt,limit", [("int8", 1.2e-2), ("bfloat16", 5e-3)])
@pytest.mark.parametrize("make", [
    lambda: fastrnn.LSTM(64, 64, num_layers=2, seed=1),
    lambda: fastrnn.GRU(64, 64, num_layers=2, seed=1),
    lambda: fastrnn.RNN(64, 64, num_layers=2, seed=1)], ids=["lstm", "gru", "rnn"])
def test_accuracy_against_float32(fmt, limit, make):
    """Max abs difference over max abs output, 2 layers with the standard initialisation,
    100 steps (BENCHMARKS.md lists the measured errors of the benchmark shapes)."""
    layer = make().eval()
    x = np.random.default_rng(6).standard_normal((100, 4, 64)).astype(np.float32)
    y, _ = layer(x)
    yq, _ = fastrnn.quantize(layer, fmt)(x)
    err = rel_err(yq, y)
    assert 0 < err <= limit


# -- layers, cells and their state ---------------------------------------------------------

@pytest.mark.parametrize("backend", [backend_param("numpy"), backend_param("cpu")])
@pytest.mark.parametrize("fmt", FORMATS)
def test_layer_api(fmt, backend, tmp_path):
    m = fastrnn.GRU(12, 16, num_layers=2, bidirectional=True, batch_first=True, seed=0,
                    backend=backend)
    before = m.state_dict()
    q = fastrnn.quantize(m, fmt)
    assert q is not m and not q.training and m.training
    for k, v in m.state_dict().items():  # the model itself is left as it is
        np.testing.assert_array_equal(v, before[k])
    assert f"quantized={fmt!r}" in repr(q)
    sd = q.state_dict()
    store = {"int8": np.int8, "bfloat16": np.uint16}[fmt]
    assert sd["weight_hh_l1_reverse"].dtype == store and sd["bias_ih_l0"].dtype == np.float32
    assert ("weight_ih_l0_scale" in sd) == (fmt == "int8")
    assert "weight_ih_l0" not in dict(q.named_parameters())
    x = np.random.default_rng(7).standard_normal((3, 5, 12)).astype(np.float32)
    y, h = q(x, lengths=[5, 2, 4])
    m.eval()
    y0, _ = m(x, lengths=[5, 2, 4])
    assert 0 < rel_err(y, y0) < 3e-2
    # save and load into a model quantized the same way
    other = fastrnn.quantize(fastrnn.GRU(12, 16, num_layers=2, bidirectional=True,
                                         batch_first=True, seed=9, backend=backend), fmt)
    path = os.path.join(tmp_path, "q.npz")
    fastrnn.save(path, {"model": q})
    fastrnn.load(path, {"model": other})
    np.testing.assert_array_equal(other(x, lengths=[5, 2, 4])[0], y)
    # a buffer keeps its dtype: float weights do not load into it
    bad = dict(sd, weight_hh_l0=sd["weight_hh_l0"].astype(np.float32))
    with pytest.raises(TypeError, match="weight_hh_l0.*expected dtype"):
        other.load_state_dict(bad)


def test_inference_only_and_clear_errors():
    m = fastrnn.LSTM(8, 16, seed=0)
    q = fastrnn.quantize(m, "int8")
    x = np.ones((4, 2, 8), np.float32)
    q(x)
    with pytest.raises(RuntimeError, match="inference only"):
        q.backward(np.ones((4, 2, 16), np.float32))
    q.train()
    with pytest.raises(RuntimeError, match="inference only; call .eval()"):
        q(x)
    with pytest.raises(ValueError, match="to\\(\\) cannot move it"):
        q.to(np.float64)
    with pytest.raises(ValueError, match="already quantized"):
        fastrnn.quantize(q, "bfloat16")
    with pytest.raises(TypeError, match="quantize a float32 layer"):
        fastrnn.quantize(fastrnn.LSTM(8, 16, dtype=np.float64), "int8")
    with pytest.raises(ValueError, match="dtype: expected one of"):
        fastrnn.quantize(m, "float16")
    with pytest.raises(ValueError, match="holds no recurrent layer"):
        fastrnn.quantize(fastrnn.nn.Linear(3, 4), "int8")
    with pytest.raises(TypeError, match="fastrnn.torch.quantize"):
        fastrnn.quantize(object(), "int8")
    pytest.importorskip("onnx")
    from fastrnn import onnx as fonnx
    with pytest.raises(ValueError, match="is quantized \\(int8\\); export the float32"):
        fonnx.export(q, "never-written.onnx")
    qw = q._weights()
    with pytest.raises(ValueError, match="run inference only"):
        F.rnn("lstm", x, qw, training=True)
    with pytest.raises(TypeError, match="float32 inputs"):
        F.rnn("lstm", x.astype(np.float64), qw, training=False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sequential_and_cells(fmt):
    """A many-to-one classifier quantized whole; a cell stepped equals the layer."""
    model = fastrnn.nn.Sequential(fastrnn.LSTM(6, 16, batch_first=True, seed=1),
                                  fastrnn.nn.LastStep(), fastrnn.nn.Linear(16, 3, seed=2))
    q = fastrnn.quantize(model, fmt)
    x = np.random.default_rng(8).standard_normal((4, 9, 6)).astype(np.float32)
    model.eval()
    assert rel_err(q(x), model(x)) < 2e-2
    cell = fastrnn.LSTMCell(6, 16, seed=3)
    layer = fastrnn.LSTM(6, 16, seed=4)
    layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    qc, ql = fastrnn.quantize(cell, fmt), fastrnn.quantize(layer, fmt)
    xt = x.transpose(1, 0, 2)
    y, _ = ql(xt)
    h = c = np.zeros((4, 16), np.float32)
    for t in range(9):
        h, c = qc(xt[t], (h, c))
        assert rel_err(h, y[t]) < 1e-5


# -- fastrnn.torch ----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_torch_quantize_equals_native(fmt, kind):
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    torch.manual_seed(0)
    module = getattr(torch.nn, kind)(10, 16, 2, batch_first=True, bidirectional=True)
    q = ft.quantize(module, fmt)
    assert isinstance(q, ft.Quantized) and not q.training
    native = getattr(fastrnn, kind)(10, 16, 2, batch_first=True, bidirectional=True)
    native.load_state_dict({k: v.detach().numpy() for k, v in module.state_dict().items()})
    nq = fastrnn.quantize(native, fmt)
    x = torch.randn(3, 7, 10)
    with torch.no_grad():
        y, h = q(x)
        y_f, _ = module(x)
    want, want_h = nq(x.numpy())
    np.testing.assert_array_equal(y.numpy(), want)
    np.testing.assert_array_equal((h[0] if kind == "LSTM" else h).numpy(),
                                  want_h[0] if kind == "LSTM" else want_h)
    assert 0 < rel_err(y.numpy(), y_f.numpy()) < 3e-2
    # a packed batch of unsorted lengths, and given states
    lengths = torch.tensor([7, 2, 5])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                     enforce_sorted=False)
    with torch.no_grad():
        got, _ = q(packed)
    pad, _ = torch.nn.utils.rnn.pad_packed_sequence(got, batch_first=True)
    want_p, _ = nq(x.numpy(), lengths=lengths.numpy())
    np.testing.assert_array_equal(pad.numpy(), want_p[:, :7])
    # state dict: low-precision buffers, loaded back into another copy
    sd = q.state_dict()
    assert sd["weight_hh_l0"].dtype == (torch.int8 if fmt == "int8" else torch.bfloat16)
    other = ft.quantize(getattr(torch.nn, kind)(10, 16, 2, batch_first=True,
                                                bidirectional=True), fmt)
    other.load_state_dict(sd)
    with torch.no_grad():
        np.testing.assert_array_equal(other(x)[0].numpy(), y.numpy())


def test_torch_quantize_model_cells_and_errors():
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = torch.nn.GRUCell(5, 8)
            self.head = torch.nn.Linear(8, 2)

        def forward(self, x):
            h = None
            for x_t in x:
                h = self.cell(x_t, h)
            return self.head(h)

    torch.manual_seed(1)
    model = Model()
    q = ft.quantize(model, "int8")
    assert isinstance(q.cell, ft.Quantized) and isinstance(model.cell, torch.nn.GRUCell)
    x = torch.randn(6, 4, 5)
    with torch.no_grad():
        assert 0 < (q(x) - model(x)).abs().max() < 2e-2
        assert q.cell(x[0]).shape == (4, 8) and q.cell(x[0, 0]).shape == (8,)
    with pytest.raises(RuntimeError, match="no backward"):
        q(x.requires_grad_())
    q.train()
    with pytest.raises(RuntimeError, match="inference only"):
        q(x)
    with pytest.raises(TypeError, match="quantize a float32 model"):
        ft.quantize(torch.nn.LSTM(3, 4).double(), "int8")
    with pytest.raises(ValueError, match="holds no RNN"):
        ft.quantize(torch.nn.Linear(3, 4), "int8")
    with pytest.raises(ValueError, match="dtype: expected one of"):
        ft.quantize(torch.nn.LSTM(3, 4), "int4")


@pytest.mark.parametrize("ih,hh", [(None, "int8"), ("bfloat16", "int8"), ("int8", "bfloat16"),
                                   (None, "bfloat16")])
@pytest.mark.parametrize("B", [1, 20])
def test_weights_of_mixed_kinds(ih, hh, B):
    """Weights made by hand may quantize w_ih and w_hh differently, or only w_hh: every
    path agrees with the reference."""
    if not fastrnn.backends()["cpu"]["available"]:
        pytest.skip("cpu backend not available")
    from fastrnn.kernels import cpu, reference
    x, weights, h0, c0 = random_problem("gru", 6, B, 32, 32, dtype=np.float32, seed=8,
                                        scale=1 / np.sqrt(32))
    w = weights[0]
    w = w._replace(w_hh=Q.quantize(w.w_hh, hh),
                   w_ih=w.w_ih if ih is None else Q.quantize(w.w_ih, ih))
    state = State(h0[0], None)
    want = reference.forward("gru", x, state, w, training=False)
    got = cpu.forward("gru", x, state, w, training=False)
    assert rel_err(got[0], want[0]) <= TOL["int8"]
