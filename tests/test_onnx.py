"""fastrnn.onnx: ONNX's own LSTM/GRU/RNN operator tests through fastrnn.onnx.Backend,
export -> ONNX Runtime against fastrnn, export -> load round trips, and clear errors."""

import re
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import fastrnn  # noqa: E402
import fastrnn.onnx as fo  # noqa: E402
from conftest import ALL_CELLS  # noqa: E402
from fastrnn.kernels.cells import get_cell  # noqa: E402


def _node_cases():
    with warnings.catch_warnings():  # (the generators of unrelated operators warn)
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases
        cases = collect_testcases(None)
    return [c for c in cases if c.model.graph.node[0].op_type in ("LSTM", "GRU", "RNN")
            and len(c.model.graph.node) == 1]


NODE_CASES = _node_cases()


def test_onnx_ships_the_recurrent_node_cases():
    assert len(NODE_CASES) >= 18
    assert {c.model.graph.node[0].op_type for c in NODE_CASES} == {"LSTM", "GRU", "RNN"}


@pytest.mark.parametrize("case", NODE_CASES, ids=lambda c: c.name)
def test_onnx_node_cases(case):
    rep = fo.prepare(case.model)
    for inputs, expected in case.data_sets:
        got = rep.run(inputs)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert g.shape == e.shape and g.dtype == e.dtype
            np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol)
    # and one node at a time, as onnx's backend tests also call it
    node = case.model.graph.node[0]
    inputs = case.data_sets[0][0]
    names = [i.name for i in case.model.graph.input]
    values = dict(zip(names, inputs))
    out = fo.run_node(node, [values.get(n) if n else None for n in node.input])
    np.testing.assert_allclose(out[-1], case.data_sets[0][1][-1], rtol=case.rtol,
                               atol=case.atol)


def _layer(cell, L, bidirectional, batch_first, bias=True, seed=0):
    spec = get_cell(cell)
    kw = dict(num_layers=L, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
              seed=seed)
    if spec.family == "rnn":
        return fastrnn.RNN(5, 6, nonlinearity=spec.activation, **kw)
    if spec.family == "gru":
        return fastrnn.GRU(5, 6, reset_after=not spec.reset_before, **kw)
    return fastrnn.LSTM(5, 6, peepholes=spec.peepholes, **kw)


def _outputs(result):
    out, states = result
    return [out] + (list(states) if isinstance(states, tuple) else [states])


@pytest.mark.parametrize("L,bidirectional,batch_first", [(1, False, False), (2, True, False),
                                                          (2, False, True), (1, True, True)])
@pytest.mark.parametrize("cell", ALL_CELLS)
def test_export_runs_in_onnx_runtime_like_fastrnn(cell, L, bidirectional, batch_first,
                                                  tmp_path):
    layer = _layer(cell, L, bidirectional, batch_first, seed=L)
    rng = np.random.default_rng(3)
    T, B = 7, 4
    x = rng.standard_normal((B, T, 5) if batch_first else (T, B, 5)).astype(np.float32)
    lengths = np.array([7, 2, 5, 1], np.int32)
    path = tmp_path / "m.onnx"
    fo.export(layer, path)
    onnx.checker.check_model(onnx.load(str(path)))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x, "sequence_lens": lengths})
    want = _outputs(layer(x, lengths=lengths))
    assert [o.name for o in sess.get_outputs()] == (
        ["output", "h_n", "c_n"] if get_cell(cell).has_cell_state else ["output", "h_n"])
    for name, g, w in zip(("output", "h_n", "c_n"), got, want):
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_padding_is_zero_and_states_stop_at_each_length(tmp_path):
    layer = fastrnn.GRU(3, 4, bidirectional=True, seed=1)
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    lengths = np.array([6, 3], np.int32)
    fo.export(layer, tmp_path / "g.onnx")
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    out, h_n = sess.run(None, {"input": x, "sequence_lens": lengths})
    assert np.all(out[3:, 1] == 0)
    short = layer(x[:3, 1:2])  # the second sequence alone, cut to its length
    np.testing.assert_allclose(h_n[:, 1], short[1][:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ALL_CELLS)
def test_export_then_load_gives_the_same_layer(cell, tmp_path):
    layer = _layer(cell, 2, True, False, bias=cell != "gru", seed=4)
    fo.export(layer, tmp_path / "m.onnx", initial_states=True)
    back = fo.load(tmp_path / "m.onnx")
    assert type(back) is type(layer) and repr(back) == repr(layer)
    assert back.state_dict().keys() == layer.state_dict().keys()
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[k], v, err_msg=k)
    x = np.random.default_rng(1).standard_normal((5, 3, 5)).astype(np.float32)
    for a, b in zip(_outputs(layer(x)), _outputs(back(x))):
        np.testing.assert_array_equal(a, b)


def test_initial_states_are_inputs(tmp_path):
    layer = fastrnn.LSTM(5, 6, num_layers=2, seed=2)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 2, 5)).astype(np.float32)
    h0, c0 = (rng.standard_normal((2, 2, 6)).astype(np.float32) for _ in range(2))
    fo.export(layer, tmp_path / "l.onnx", lengths=False, initial_states=True)
    sess = ort.InferenceSession(str(tmp_path / "l.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x, "h0": h0, "c0": c0})
    for g, w in zip(got, _outputs(layer(x, (h0, c0)))):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_sequential_with_embedding_and_linear(tmp_path):
    model = fastrnn.nn.Sequential(fastrnn.nn.Embedding(11, 5, seed=0),
                                  fastrnn.LSTM(5, 6, num_layers=2, seed=0),
                                  fastrnn.nn.Dropout(0.3), fastrnn.nn.Linear(6, 3, seed=0))
    model.eval()
    idx = np.random.default_rng(0).integers(0, 11, (7, 2))
    lengths = np.array([7, 4], np.int32)
    fo.export(model, tmp_path / "s.onnx")
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input": idx, "sequence_lens": lengths})
    np.testing.assert_allclose(got, model(idx, lengths=lengths), rtol=1e-4, atol=1e-5)
    back = fo.load(tmp_path / "s.onnx")
    back.eval()
    np.testing.assert_array_equal(back(idx, lengths=lengths), model(idx, lengths=lengths))


@pytest.mark.parametrize("lengths", [True, False])
@pytest.mark.parametrize("batch_first,bidirectional", [(False, False), (True, True)])
def test_many_to_one_classifier_runs_in_onnx_runtime(batch_first, bidirectional, lengths,
                                                      tmp_path):
    """Sequential(LSTM, LastStep, Linear): the commonest RNN model, exported with its
    LastStep, equal in ONNX Runtime and after load."""
    model = fastrnn.nn.Sequential(
        fastrnn.LSTM(5, 6, batch_first=batch_first, bidirectional=bidirectional, seed=7),
        fastrnn.nn.LastStep(), fastrnn.nn.Linear(12 if bidirectional else 6, 3, seed=8))
    model.eval()
    T, B = 6, 4
    x = np.random.default_rng(4).standard_normal(
        (B, T, 5) if batch_first else (T, B, 5)).astype(np.float32)
    lens = np.array([6, 2, 5, 1], np.int32) if lengths else None
    fo.export(model, tmp_path / "c.onnx", lengths=lengths)
    sess = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input": x, **({"sequence_lens": lens} if lengths else {})}
    (got,) = sess.run(None, feeds)
    want = model(x, lengths=lens)
    assert got.shape == want.shape == (B, 3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    back = fo.load(tmp_path / "c.onnx")
    back.eval()
    assert repr(back) == repr(model)
    np.testing.assert_array_equal(back(x, lengths=lens), want)


def test_fastrnn_torch_layers_export_and_other_torch_modules_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    import fastrnn.torch as ft
    torch.manual_seed(0)
    layer = ft.GRU(5, 6, num_layers=2, bidirectional=True, batch_first=True)
    fo.export(layer, tmp_path / "t.onnx")
    x = np.random.default_rng(0).standard_normal((3, 7, 5)).astype(np.float32)
    lengths = np.array([7, 3, 5], np.int32)
    sess = ort.InferenceSession(str(tmp_path / "t.onnx"), providers=["CPUExecutionProvider"])
    out, h_n = sess.run(None, {"input": x, "sequence_lens": lengths})
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), torch.tensor(lengths),
                                                     batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        want, want_h = layer(packed)
    want, _ = torch.nn.utils.rnn.pad_packed_sequence(want, batch_first=True)
    np.testing.assert_allclose(out, want.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h_n, want_h.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="swap its fastrnn.torch layers back to torch.nn's"):
        fo.export(torch.nn.Sequential(ft.LSTM(4, 8)), tmp_path / "s.onnx")


def test_gru_reset_before_matches_onnx_reference_implementation(tmp_path):
    """An independent implementation of the published equations: ONNX's reference
    evaluator runs the exported GRU (linear_before_reset=0)."""
    from onnx.reference import ReferenceEvaluator
    layer = fastrnn.GRU(4, 5, bidirectional=True, reset_after=False, dtype=np.float64, seed=6)
    x = np.random.default_rng(6).standard_normal((6, 3, 4))
    fo.export(layer, tmp_path / "g.onnx", lengths=False)
    got = ReferenceEvaluator(str(tmp_path / "g.onnx")).run(None, {"input": x})
    for g, w in zip(got, _outputs(layer(x))):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_peephole_lstm_matches_onnx_reference_implementation(tmp_path):
    """ONNX's reference evaluator runs the exported peephole LSTM (input P), from random
    initial states, so that every peephole term counts from the first step."""
    from onnx.reference import ReferenceEvaluator
    layer = fastrnn.LSTM(4, 5, bidirectional=True, peepholes=True, dtype=np.float64, seed=7)
    for name, p in layer.named_parameters():
        if name.startswith("peephole"):  # larger than the init, to weigh in the result
            p.data[...] = np.random.default_rng(len(name)).uniform(-1, 1, p.data.shape)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 3, 4))
    h0, c0 = rng.standard_normal((2, 2, 3, 5))
    fo.export(layer, tmp_path / "p.onnx", lengths=False, initial_states=True)
    assert [n.op_type for n in onnx.load(str(tmp_path / "p.onnx")).graph.node].count("LSTM") == 1
    got = ReferenceEvaluator(str(tmp_path / "p.onnx")).run(None, {"input": x, "h0": h0,
                                                                  "c0": c0})
    want = _outputs(layer(x, (h0, c0)))
    plain = fastrnn.LSTM(4, 5, bidirectional=True, dtype=np.float64)
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if "peephole" not in k})
    assert np.abs(plain(x, (h0, c0))[0] - want[0]).max() > 1e-2  # the peepholes matter
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_clear_errors(tmp_path):
    from onnx import helper, TensorProto
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 1, 3])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 1, 3])

    def model(node):
        return helper.make_model(helper.make_graph([node], "g", [x], [y]),
                                 opset_imports=[helper.make_opsetid("", 17)])

    relu = model(helper.make_node("Relu", ["X"], ["Y"], name="act"))
    with pytest.raises(fo.UnsupportedNodeError, match="Relu node 'act'.*not Relu"):
        fo.prepare(relu)
    onnx.save(relu, str(tmp_path / "relu.onnx"))
    with pytest.raises(fo.UnsupportedNodeError, match="Relu node 'act'"):
        fo.load(tmp_path / "relu.onnx")
    W = np.zeros((1, 4, 3), np.float32)
    R = np.zeros((1, 4, 4), np.float32)
    node = helper.make_node("RNN", ["X", "W", "R"], ["Y"], name="r", hidden_size=4, clip=1.0)
    with pytest.raises(fo.UnsupportedNodeError, match="RNN node 'r': attribute 'clip'"):
        fo.run_node(node, [np.zeros((2, 1, 3), np.float32), W, R])
    node = helper.make_node("RNN", ["X", "W", "R"], ["Y"], name="r", hidden_size=4,
                            activations=["Softsign"])
    with pytest.raises(fo.UnsupportedNodeError, match="'activations'=\\['Softsign'\\]"):
        fo.run_node(node, [np.zeros((2, 1, 3), np.float32), W, R])
    node = helper.make_node("LSTM", ["X", "W", "R", "", "", "", "", "P"], ["Y"], name="l",
                            hidden_size=4)
    W4, R4 = np.ones((1, 16, 3), np.float32), np.ones((1, 16, 4), np.float32)
    with pytest.raises(fo.UnsupportedNodeError, match=re.escape(
            "LSTM node 'l': input P of shape (1, 8): expected (1, 12)")):
        fo.run_node(node, [np.zeros((2, 1, 3), np.float32), W4, R4, None, None, None, None,
                           np.ones((1, 8), np.float32)])
    with pytest.raises(fo.UnsupportedNodeError, match=re.escape("input P of shape (1, 8)")):
        fo.run_node(node, [np.zeros((2, 1, 3), np.float32), W4, R4, None, None, None, None,
                           np.zeros((1, 8), np.float32)])
    with pytest.raises(ValueError, match="a LastStep that follows no recurrent layer"):
        fo.export(fastrnn.nn.Sequential(fastrnn.nn.Linear(3, 4), fastrnn.nn.LastStep()),
                  tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="opset: expected an integer >= 14"):
        fo.export(fastrnn.LSTM(3, 4), tmp_path / "x.onnx", opset=9)
    assert fo.Backend.supports_device("CPU") and not fo.Backend.supports_device("TPU")
