"""``export``: a fastrnn layer (or a ``Sequential`` of layers with an obvious ONNX form) as an
ONNX model that ONNX Runtime runs; ``load``: the layers back from such a file."""

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..kernels.cells import get_cell
from ..layers import GRU, LSTM, RNN
from ..nn import Dropout, Embedding, LastStep, Linear, Sequential
from ._backend import attributes
from ._convert import OP_TYPE, from_onnx, parameters, to_onnx
from ._nodes import UnsupportedNodeError, cell_for, node_label

OPSET = 17
_META = "fastrnn"
_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


def _host(a):
    return np.asarray(a) if isinstance(a, np.ndarray) else a.get()


class _Graph:
    def __init__(self, dtype):
        self.nodes, self.inits, self.dtype = [], [], np.dtype(dtype)
        self.count = 0

    def name(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def init(self, name, value):
        self.inits.append(numpy_helper.from_array(np.asarray(value, order="C"), name))
        return name

    def node(self, op, inputs, n_out=1, **attrs):
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=self.name(op), **attrs))
        return outs if n_out > 1 else outs[0]


def _recurrent(g, layer, x, prefix, lengths_name, h0_name, c0_name):
    """Nodes of a recurrent layer on the time-major ``x``; returns (output, h_n, c_n)."""
    spec = get_cell(layer.cell)
    D, H, L = layer.num_directions, layer.hidden_size, layer.num_layers
    weights = [w.map(_host) for w in layer._weights()]
    op = OP_TYPE[spec.family]
    attrs = {"hidden_size": H, "direction": "bidirectional" if D == 2 else "forward"}
    if spec.family == "rnn":
        attrs["activations"] = [spec.activation.capitalize()] * D
    if spec.family == "gru":
        attrs["linear_before_reset"] = 0 if spec.reset_before else 1
    hs, cs = [], []
    for layer_k in range(L):
        Ws, Rs, Bs, Ps = [], [], [], []
        for d in range(D):
            W, R, B, P = to_onnx(spec.family, H, weights[layer_k * D + d])
            Ws.append(W), Rs.append(R), Bs.append(B), Ps.append(P)
        inputs = [x, g.init(f"{prefix}W_l{layer_k}", np.stack(Ws)),
                  g.init(f"{prefix}R_l{layer_k}", np.stack(Rs)),
                  g.init(f"{prefix}B_l{layer_k}", np.stack(Bs)) if layer.bias else "",
                  lengths_name or ""]
        for state in ((h0_name, c0_name) if op == "LSTM" else (h0_name,)):
            if state:
                starts = g.init(g.name("start"), np.array([layer_k * D], np.int64))
                ends = g.init(g.name("end"), np.array([(layer_k + 1) * D], np.int64))
                inputs.append(g.node("Slice", [state, starts, ends]))
            else:
                inputs.append("")
        if spec.peepholes:
            inputs.append(g.init(f"{prefix}P_l{layer_k}", np.stack(Ps)))
        while inputs and inputs[-1] == "":
            inputs.pop()
        outs = g.node(op, inputs, n_out=3 if op == "LSTM" else 2, **attrs)
        y, h = outs[0], outs[1]
        hs.append(h)
        if op == "LSTM":
            cs.append(outs[2])
        # Y [T, D, B, H] -> [T, B, D*H], the next layer's input
        y = g.node("Transpose", [y], perm=[0, 2, 1, 3])
        x = g.node("Reshape", [y, g.init(g.name("shape"), np.array([0, 0, -1], np.int64))])
    h_n = hs[0] if L == 1 else g.node("Concat", hs, axis=0)
    c_n = None
    if op == "LSTM":
        c_n = cs[0] if L == 1 else g.node("Concat", cs, axis=0)
    return x, h_n, c_n


def _describe(module):
    """What :func:`load` needs to rebuild ``module`` besides its weights."""
    if isinstance(module, (RNN, GRU, LSTM)):
        if module.proj_size:
            raise TypeError(f"model: fastrnn.onnx.export cannot write an LSTM with proj_size="
                            f"{module.proj_size}: ONNX's LSTM operator has no projection")
        for option, value in (("layer_norm", module.layer_norm), ("zoneout", module.zoneout)):
            if value:
                raise TypeError(f"model: fastrnn.onnx.export cannot write a {option}="
                                f"{value} layer: ONNX's {type(module).__name__} operator has "
                                "no such option")
        d = {"type": type(module).__name__, "input_size": module.input_size,
             "hidden_size": module.hidden_size, "num_layers": module.num_layers,
             "bias": module.bias, "batch_first": module.batch_first,
             "bidirectional": module.bidirectional}
        if isinstance(module, RNN):
            d["nonlinearity"] = module.nonlinearity
        if isinstance(module, GRU):
            d["reset_after"] = module.reset_after
        if isinstance(module, LSTM):
            d["peepholes"] = module.peepholes
        return d
    if isinstance(module, Linear):
        return {"type": "Linear", "in_features": module.in_features,
                "out_features": module.out_features, "bias": "bias" in module._parameters}
    if isinstance(module, Embedding):
        return {"type": "Embedding", "num_embeddings": module.num_embeddings,
                "embedding_dim": module.embedding_dim}
    if isinstance(module, Dropout):
        return {"type": "Dropout", "p": module.p}
    if isinstance(module, LastStep):
        if module.batch_first is None or module.directions is None:
            raise ValueError("model: a LastStep that follows no recurrent layer needs "
                             "batch_first and directions stated to be exported")
        return {"type": "LastStep", "batch_first": module.batch_first,
                "directions": module.directions}
    raise TypeError(f"model: fastrnn.onnx.export cannot write a {type(module).__name__}: it "
                    "writes fastrnn's RNN, LSTM and GRU layers, and Sequentials of them with "
                    "Linear, Embedding, Dropout and LastStep")


def _last_step(g, m, x, lengths_name):
    """Nodes of a :class:`LastStep` on the time-major ``x [T,B,F]``: ``[B,F]``."""
    if lengths_name:  # x[len_b - 1, b, :] for each row: GatherElements along time
        one = g.init(g.name("one"), np.array(1, np.int64))
        last = g.node("Sub", [g.node("Cast", [lengths_name], to=TensorProto.INT64), one])
        index = g.node("Reshape", [last, g.init(g.name("shape"),
                                                np.array([1, -1, 1], np.int64))])
        span = g.node("Slice", [g.node("Shape", [x]),
                                g.init(g.name("start"), np.array([1], np.int64)),
                                g.init(g.name("end"), np.array([3], np.int64))])
        size = g.node("Concat", [g.init(g.name("one"), np.array([1], np.int64)), span],
                      axis=0)
        picked = g.node("GatherElements", [x, g.node("Expand", [index, size])], axis=0)
        out = g.node("Squeeze", [picked, g.init(g.name("axes"), np.array([0], np.int64))])
    else:
        out = g.node("Gather", [x, g.init(g.name("index"), np.array(-1, np.int64))], axis=0)
    if m.directions == 2:  # the reverse half ends at step 0
        first = g.node("Gather", [x, g.init(g.name("index"), np.array(0, np.int64))], axis=0)
        features = g.node("Slice", [g.node("Shape", [x]),
                                    g.init(g.name("start"), np.array([2], np.int64)),
                                    g.init(g.name("end"), np.array([3], np.int64))])
        half = g.node("Div", [features, g.init(g.name("two"), np.array([2], np.int64))])
        axis = g.init(g.name("axis"), np.array([1], np.int64))
        zero = g.init(g.name("zero"), np.array([0], np.int64))
        forward = g.node("Slice", [out, zero, half, axis])
        end = g.init(g.name("end"), np.array([np.iinfo(np.int64).max], np.int64))
        reverse = g.node("Slice", [first, half, end, axis])
        out = g.node("Concat", [forward, reverse], axis=1)
    return out


def _torch_module(model):
    """Whether ``model`` is a PyTorch module (told without importing torch)."""
    return any(c.__module__.split(".")[0] == "torch" for c in type(model).__mro__)


def _native(model):
    """A ``fastrnn.torch`` RNN, LSTM or GRU layer as fastrnn's own layer with its weights (the
    writer reads fastrnn's layers); any other PyTorch module is an error that says what to
    do."""
    kind = type(model).__name__
    if type(model).__module__.startswith("fastrnn.torch") and kind in ("RNN", "LSTM", "GRU"):
        params = list(model.parameters())
        dtype = np.dtype(str(params[0].dtype).split(".")[-1]) if params else np.float32
        kw = dict(num_layers=model.num_layers, bias=model.bias, batch_first=model.batch_first,
                  bidirectional=model.bidirectional, dtype=dtype)
        if kind == "RNN":
            layer = RNN(model.input_size, model.hidden_size, nonlinearity=model.nonlinearity,
                        **kw)
        elif kind == "GRU":
            layer = GRU(model.input_size, model.hidden_size, **kw)
        else:
            layer = LSTM(model.input_size, model.hidden_size, proj_size=model.proj_size, **kw)
        layer.load_state_dict({k: v.detach().cpu().numpy()
                               for k, v in model.state_dict().items()})
        return layer
    raise TypeError(
        f"model: fastrnn.onnx.export writes fastrnn's layers and Sequentials and single "
        f"fastrnn.torch RNN, LSTM and GRU layers, got a {type(model).__module__}.{kind}; for "
        "a whole PyTorch model, swap its fastrnn.torch layers back to torch.nn's (they share "
        "their state_dict) and use torch.onnx.export")


def export(model, path, *, lengths=True, initial_states=False, opset=OPSET):
    """Write ``model`` - an ``RNN``, ``LSTM`` or ``GRU`` layer, or a ``Sequential`` of such
    layers, ``Linear``, ``Embedding``, ``Dropout`` (the identity: the export is for
    inference) and ``LastStep`` (many-to-one: ``output`` is then ``[B,F]``), or a
    ``fastrnn.torch`` RNN, LSTM or GRU layer - to ``path`` as an ONNX model (opset
    ``opset``, at least 14).

    Inputs: ``input`` (as the model takes it: ``[T,B,I]``, or ``[B,T,I]`` with
    ``batch_first``; integer indices ``[T,B]`` for a leading ``Embedding``), with
    ``lengths`` an int32 ``sequence_lens [B]`` (outputs past a sequence's length are zero,
    final states taken at its last step), with ``initial_states`` a layer's ``h0``
    (and ``c0``) ``[L*D,B,H]``. Outputs: ``output``, and for a layer ``h_n`` (and ``c_n``).
    Returns the ``onnx.ModelProto`` it wrote."""
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 14:
        raise ValueError(f"opset: expected an integer >= 14, got {opset!r}")
    if _torch_module(model):
        model = _native(model)
    modules = list(model) if isinstance(model, Sequential) else [model]
    if not modules:
        raise ValueError("model: an empty Sequential has nothing to export")
    meta = [_describe(m) for m in modules]
    recurrent = [m for m in modules if isinstance(m, (RNN, GRU, LSTM))]
    for m in recurrent:
        if m.quantized:
            raise ValueError(f"model: {type(m).__name__} is quantized ({m.quantized}); export "
                             "the float32 model (ONNX Runtime's quantize_dynamic quantizes "
                             "an exported model)")
    if initial_states and (isinstance(model, Sequential) or not recurrent):
        raise ValueError("initial_states: only a single recurrent layer takes initial states")
    dtype = np.dtype(modules[0].dtype)
    if dtype not in _ELEM:
        raise ValueError(f"model: dtype {dtype} has no ONNX form here (float32, float64)")
    g = _Graph(dtype)
    steps = [m for m in modules if isinstance(m, LastStep)]
    batch_first = (recurrent or steps or [None])[0]
    batch_first = bool(batch_first is not None and batch_first.batch_first)
    for m in steps:
        if m.batch_first != batch_first:
            raise ValueError(f"model: a LastStep with batch_first={m.batch_first} in a model "
                             f"whose input has batch_first={batch_first}")
    first = modules[0]
    graph_inputs, lengths_name, h0_name, c0_name = _inputs(
        first, recurrent, batch_first, dtype, lengths, initial_states)
    x = "input"
    if batch_first:  # everything below is time-major
        x = g.node("Transpose", [x], perm=[1, 0] if isinstance(first, Embedding) else [1, 0, 2])
    x, h_n, c_n, stepped = _body(g, model, modules, x, lengths_name, h0_name, c0_name)
    if batch_first and not stepped:
        x = g.node("Transpose", [x], perm=[1, 0, 2])
    features = _output_features(modules)
    lead = ["batch"] if stepped else ["batch", "seq"] if batch_first else ["seq", "batch"]
    outputs = [("output", x, lead + [features])]
    if not isinstance(model, Sequential):
        states = [model.num_layers * model.num_directions, "batch", model.hidden_size]
        outputs += [("h_n", h_n, states)] + ([("c_n", c_n, states)] if c_n is not None else [])
    for name, src, _ in outputs:
        g.nodes.append(helper.make_node("Identity", [src], [name], name=f"out_{name}"))
    graph = helper.make_graph(
        g.nodes, "fastrnn", graph_inputs,
        [helper.make_tensor_value_info(name, _ELEM[dtype], shape)
         for name, _, shape in outputs],
        initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="fastrnn")
    helper.set_model_props(proto, {_META: json.dumps(
        {"sequential": isinstance(model, Sequential), "modules": meta})})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return proto


def _inputs(first, recurrent, batch_first, dtype, lengths, initial_states):
    """The graph's inputs, and the names of ``sequence_lens``, ``h0``, ``c0`` (None when
    absent)."""
    if isinstance(first, Embedding):
        graph_inputs = [helper.make_tensor_value_info(
            "input", TensorProto.INT64, ["batch", "seq"] if batch_first else ["seq", "batch"])]
    else:
        in_size = first.input_size if not isinstance(first, Linear) else first.in_features
        graph_inputs = [helper.make_tensor_value_info(
            "input", _ELEM[dtype],
            (["batch", "seq"] if batch_first else ["seq", "batch"]) + [in_size])]
    lengths_name = h0_name = c0_name = None
    if lengths and recurrent:
        lengths_name = "sequence_lens"
        graph_inputs.append(helper.make_tensor_value_info(lengths_name, TensorProto.INT32,
                                                          ["batch"]))
    if initial_states:
        layer = recurrent[0]
        shape = [layer.num_layers * layer.num_directions, "batch", layer.hidden_size]
        h0_name = "h0"
        graph_inputs.append(helper.make_tensor_value_info("h0", _ELEM[dtype], shape))
        if isinstance(layer, LSTM):
            c0_name = "c0"
            graph_inputs.append(helper.make_tensor_value_info("c0", _ELEM[dtype], shape))
    return graph_inputs, lengths_name, h0_name, c0_name


def _body(g, model, modules, x, lengths_name, h0_name, c0_name):
    """Every module's nodes on the time-major ``x``: the output's name, a layer's ``h_n``
    and ``c_n``, and whether a ``LastStep`` made the output ``[B,F]``."""
    h_n = c_n = None
    stepped = False
    for k, m in enumerate(modules):
        prefix = f"{k}." if isinstance(model, Sequential) else ""
        if isinstance(m, (RNN, GRU, LSTM)):
            x, h_n, c_n = _recurrent(g, m, x, prefix, lengths_name, h0_name, c0_name)
        elif isinstance(m, Linear):
            w = _host(m._parameters["weight"].data)
            x = g.node("MatMul", [x, g.init(prefix + "weight_T", w.T)])
            if "bias" in m._parameters:
                x = g.node("Add", [x, g.init(prefix + "bias", _host(m._parameters["bias"].data))])
        elif isinstance(m, Embedding):
            x = g.node("Gather", [g.init(prefix + "weight", _host(m._parameters["weight"].data)),
                                  x], axis=0)
        elif isinstance(m, LastStep):
            x = _last_step(g, m, x, lengths_name)
            stepped = True
        else:  # Dropout: the identity in inference
            x = g.node("Identity", [x])
    return x, h_n, c_n, stepped


def _output_features(modules):
    """The size of the output's last dimension."""
    last = modules[-1]
    features = (last.out_features if isinstance(last, Linear) else last.embedding_dim
                if isinstance(last, Embedding) else None)
    for m in reversed(modules):
        if features is None and isinstance(m, (RNN, GRU, LSTM)):
            features = m.num_directions * m.hidden_size
        elif features is None and isinstance(m, Linear):
            features = m.out_features
    return features


def load(path, *, dtype=None, backend=None):
    """The fastrnn model :func:`export` wrote to ``path``, weights included; or, for another
    producer's file, a layer from a graph of one ``LSTM``, ``GRU`` or ``RNN`` node. Other
    graphs get :class:`UnsupportedNodeError` naming the node that is not understood."""
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    props = {p.key: p.value for p in proto.metadata_props}
    if _META not in props:
        return _load_foreign(proto, inits, dtype, backend)
    meta = json.loads(props[_META])
    rec = [n for n in proto.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    modules, k_rec = [], 0
    for k, d in enumerate(meta["modules"]):
        prefix = f"{k}." if meta["sequential"] else ""
        kind = d["type"]
        if kind in ("RNN", "GRU", "LSTM"):
            cls = {"RNN": RNN, "GRU": GRU, "LSTM": LSTM}[kind]
            kw = {key: d[key] for key in ("num_layers", "bias", "batch_first",
                                          "bidirectional")}
            if kind == "RNN":
                kw["nonlinearity"] = d["nonlinearity"]
            if kind == "GRU":
                kw["reset_after"] = d["reset_after"]
            if kind == "LSTM":
                kw["peepholes"] = d.get("peepholes", False)
            m = cls(d["input_size"], d["hidden_size"], dtype=dtype or np.float32,
                    backend=backend, **kw)
            spec = get_cell(m.cell)
            D, H = m.num_directions, m.hidden_size
            state = {}
            for layer_k in range(m.num_layers):
                node = rec[k_rec]
                k_rec += 1
                W, R = inits[f"{prefix}W_l{layer_k}"], inits[f"{prefix}R_l{layer_k}"]
                B = inits.get(f"{prefix}B_l{layer_k}")
                P = inits[f"{prefix}P_l{layer_k}"] if spec.peepholes else None
                for dd in range(D):
                    w = from_onnx(spec.family, H, W[dd], R[dd], None if B is None else B[dd],
                                  None if P is None else P[dd])
                    state.update(parameters(w, f"_l{layer_k}" + ("_reverse" if dd else "")))
                if node.op_type != {"RNN": "RNN", "GRU": "GRU", "LSTM": "LSTM"}[kind]:
                    raise UnsupportedNodeError(f"{node_label(node)}: expected a {kind} node")
            _set(m, state)
        elif kind == "Linear":
            m = Linear(d["in_features"], d["out_features"], bias=d["bias"],
                       dtype=dtype or np.float32, backend=backend)
            state = {"weight": inits[prefix + "weight_T"].T}
            if d["bias"]:
                state["bias"] = inits[prefix + "bias"]
            _set(m, state)
        elif kind == "Embedding":
            m = Embedding(d["num_embeddings"], d["embedding_dim"], dtype=dtype or np.float32,
                          backend=backend)
            _set(m, {"weight": inits[prefix + "weight"]})
        elif kind == "LastStep":
            m = LastStep(batch_first=d["batch_first"], directions=d["directions"])
        else:
            m = Dropout(d["p"])
        modules.append(m)
    return Sequential(*modules) if meta["sequential"] else modules[0]


def _set(module, state):
    module.load_state_dict({k: np.ascontiguousarray(v, dtype=module.dtype)
                            for k, v in state.items()})


def _load_foreign(proto, inits, dtype, backend):
    """A layer from a graph whose only computing node is one LSTM/GRU/RNN."""
    rec = []
    for node in proto.graph.node:
        if node.op_type in ("LSTM", "GRU", "RNN"):
            rec.append(node)
        elif node.op_type not in ("Identity",):
            raise UnsupportedNodeError(
                f"{node_label(node)}: fastrnn.onnx.load rebuilds files written by "
                "fastrnn.onnx.export, or graphs of one LSTM, GRU or RNN node")
    if len(rec) != 1:
        raise UnsupportedNodeError(f"graph {proto.graph.name!r}: expected one LSTM, GRU or "
                                   f"RNN node, found {len(rec)}")
    node = rec[0]
    attrs = attributes(node)
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction == "reverse":
        raise UnsupportedNodeError(f"{node_label(node)}: direction 'reverse' has no fastrnn layer")
    D = 2 if direction == "bidirectional" else 1
    names = list(node.input) + [""] * 8  # (sequence_lens and states: the layer's arguments)
    try:
        W, R = inits[names[1]], inits[names[2]]
        P = inits[names[7]] if node.op_type == "LSTM" and names[7] else None
    except KeyError:
        raise UnsupportedNodeError(f"{node_label(node)}: W, R and P must be initializers") \
            from None
    cell = cell_for(node, attrs, D, peepholes=P is not None and bool(np.any(P)))
    B = inits.get(names[3]) if names[3] else None
    spec = get_cell(cell)
    H, I = int(attrs["hidden_size"]), W.shape[2]
    kw = dict(bias=B is not None, bidirectional=D == 2, batch_first=bool(attrs.get("layout", 0)),
              dtype=dtype or W.dtype, backend=backend)
    if spec.family == "rnn":
        m = RNN(I, H, nonlinearity=spec.activation, **kw)
    elif spec.family == "gru":
        m = GRU(I, H, reset_after=not spec.reset_before, **kw)
    else:
        m = LSTM(I, H, peepholes=spec.peepholes, **kw)
    state = {}
    for d in range(D):
        w = from_onnx(spec.family, H, W[d], R[d], None if B is None else B[d],
                      P[d] if spec.peepholes else None)
        state.update(parameters(w, "_l0" + ("_reverse" if d else "")))
    _set(m, state)
    return m
