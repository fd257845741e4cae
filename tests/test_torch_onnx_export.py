"""torch.onnx.export of PyTorch models with fastrnn.torch layers: both exporters write
standard ONNX LSTM/GRU/RNN nodes (a cell: its gate arithmetic), and ONNX Runtime runs the
file equal to the model; torch.export writes torch's own operators."""

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import fastrnn.torch as ft  # noqa: E402  (after the skip: it imports torch)


class _Tagger(torch.nn.Module):
    """A sequence layer, then a linear head on every step."""

    def __init__(self, layer, width):
        super().__init__()
        self.rnn, self.head = layer, torch.nn.Linear(width, 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y)


class _Decoder(torch.nn.Module):
    """A cell unrolled over a few steps from a given state."""

    def __init__(self, cell, steps=3):
        super().__init__()
        self.cell, self.steps = cell, steps

    def forward(self, x, h):
        lstm = isinstance(self.cell, torch.nn.LSTMCell)
        state = (h, torch.zeros_like(h)) if lstm else h
        outs = []
        for _ in range(self.steps):
            state = self.cell(x, state)
            outs.append(state[0] if lstm else state)
        return torch.stack(outs)


MODELS = {  # name: a model of fastrnn.torch's modules, or of torch.nn's
    "lstm-2-layers-bi-batch-first": lambda nn: _Tagger(
        nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True), 12),
    "gru-bi": lambda nn: _Tagger(nn.GRU(4, 6, bidirectional=True), 12),
    "rnn-relu-no-bias": lambda nn: _Tagger(nn.RNN(4, 6, nonlinearity="relu", bias=False), 6),
    "lstm-cell": lambda nn: _Decoder(nn.LSTMCell(4, 6)),
    "gru-cell": lambda nn: _Decoder(nn.GRUCell(4, 6)),
    "rnn-cell": lambda nn: _Decoder(nn.RNNCell(4, 6)),
}


def _inputs(name):
    g = torch.Generator().manual_seed(3)
    if name.endswith("cell"):
        return torch.randn(2, 4, generator=g), torch.randn(2, 6, generator=g)
    shape = (2, 5, 4) if "batch-first" in name else (5, 2, 4)
    return (torch.randn(shape, generator=g),)


def _export(model, inputs, dynamo):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            torch.onnx.export(model, inputs, f, dynamo=True)
        else:
            torch.onnx.export(model, inputs, f, dynamo=False)
    return f.getvalue()


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_runtime_runs_the_export_equal_to_the_model(name, dynamo):
    """The file holds the operators torch.nn's export of the same model holds (ONNX's
    LSTM and GRU; the dynamo exporter unrolls an RNN), and runs equal to the model."""
    torch.manual_seed(0)
    model = MODELS[name](ft).eval()
    reference = MODELS[name](torch.nn).eval()
    reference.load_state_dict(model.state_dict())
    inputs = _inputs(name)
    with torch.no_grad():
        want = model(*inputs).numpy()
    data = _export(model, inputs, dynamo)
    nodes = onnx.load_from_string(data).graph.node
    ops = sorted({n.op_type for n in nodes})
    assert ops == sorted({n.op_type for n in onnx.load_from_string(
        _export(reference, inputs, dynamo)).graph.node})
    assert ("LSTM" in ops) == name.startswith("lstm-2") and ("GRU" in ops) == (name == "gru-bi")
    assert not any("fastrnn" in n.domain for n in nodes)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    got = session.run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_an_lstm_with_a_projection_is_a_clear_error(dynamo):
    model = _Tagger(ft.LSTM(4, 6, proj_size=3), 3).eval()
    with pytest.raises(Exception, match="proj_size=3: ONNX's LSTM operator has no projection"):
        _export(model, _inputs("lstm-projection"), dynamo)


def test_torch_export_writes_torchs_own_operators():
    """An exported program (torch.export) holds torch's operators, not fastrnn's, and
    computes the same."""
    model = _Tagger(ft.GRU(4, 6, bidirectional=True), 12).eval()
    (x,) = _inputs("gru-bi")
    program = torch.export.export(model, (x,))
    assert "fastrnn" not in str(program.graph)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))


def test_outside_export_the_layers_still_run_fastrnns_kernels(monkeypatch):
    """The export switch is the exporters' own flag: an ordinary call never takes
    torch.nn's path."""
    from fastrnn.torch import _modules
    calls = []
    real_rnn, real_step = _modules.rnn, _modules.step
    monkeypatch.setattr(_modules, "rnn", lambda *a: (calls.append(a[5].cell), real_rnn(*a))[1])
    monkeypatch.setattr(_modules, "step", lambda *a: (calls.append(a[0]), real_step(*a))[1])
    ft.LSTM(4, 6)(torch.randn(5, 2, 4))
    ft.GRUCell(4, 6)(torch.randn(2, 4))
    assert calls == ["lstm", "gru"]
