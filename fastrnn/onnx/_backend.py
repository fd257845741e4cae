"""``fastrnn.onnx.Backend``: an ``onnx.backend.base.Backend`` for graphs of ONNX ``LSTM``,
``GRU`` and ``RNN`` nodes (and the shape operators between them), run by fastrnn."""

import onnx
import onnx.backend.base
from onnx import helper, numpy_helper

import numpy as np

from .. import dispatch
from ._nodes import UnsupportedNodeError, node_label, run_recurrent

_DEVICES = {"CPU": "cpu", "CUDA": "gpu"}


def attributes(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _transpose(node, attrs, inputs):
    (x,) = inputs[:1]
    return [np.transpose(x, attrs.get("perm"))]


def _reshape(node, attrs, inputs):
    x, shape = inputs[:2]
    shape = [x.shape[i] if s == 0 and not attrs.get("allowzero", 0) else int(s)
             for i, s in enumerate(shape)]
    return [np.reshape(x, shape)]


def _squeeze(node, attrs, inputs):
    axes = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs.get("axes")
    return [np.squeeze(inputs[0], axis=None if axes is None else tuple(int(a) for a in axes))]


def _unsqueeze(node, attrs, inputs):
    axes = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs.get("axes")
    return [np.expand_dims(inputs[0], tuple(int(a) for a in axes))]


def _gemm(node, attrs, inputs):
    a, b = inputs[0], inputs[1]
    if attrs.get("transA", 0):
        a = a.T
    if attrs.get("transB", 0):
        b = b.T
    y = attrs.get("alpha", 1.0) * (a @ b)
    if len(inputs) > 2 and inputs[2] is not None:
        y = y + attrs.get("beta", 1.0) * inputs[2]
    return [y.astype(inputs[0].dtype)]


def _slice(node, attrs, inputs):
    x, starts, ends = inputs[:3]
    axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
    steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for a, s0, e0, st in zip(axes, starts, ends, steps):
        index[int(a)] = slice(int(s0), int(e0), int(st))
    return [x[tuple(index)]]


def _gather(node, attrs, inputs):
    return [np.take(inputs[0], inputs[1].astype(np.int64), axis=attrs.get("axis", 0))]


_SHAPE_OPS = {
    "Identity": lambda node, attrs, inputs: [inputs[0]],
    "Dropout": lambda node, attrs, inputs: [inputs[0]],  # inference: the identity
    "Transpose": _transpose, "Reshape": _reshape, "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze, "Gemm": _gemm, "Gather": _gather, "Slice": _slice,
    "MatMul": lambda node, attrs, inputs: [inputs[0] @ inputs[1]],
    "Add": lambda node, attrs, inputs: [inputs[0] + inputs[1]],
    "Concat": lambda node, attrs, inputs: [np.concatenate(inputs, axis=attrs["axis"])],
}


def run_node_values(node, values, backend):
    """Outputs of ``node`` (a list, one per ``node.output``) from ``values`` (a list in the
    order of ``node.input``, None where absent), or :class:`UnsupportedNodeError`."""
    attrs = attributes(node)
    if node.op_type in ("LSTM", "GRU", "RNN"):
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedNodeError(f"{node_label(node)}: domain {node.domain!r}")
        return run_recurrent(node, attrs, values, backend)
    if node.op_type in _SHAPE_OPS:
        return _SHAPE_OPS[node.op_type](node, attrs, values)
    raise UnsupportedNodeError(
        f"{node_label(node)}: fastrnn runs LSTM, GRU and RNN nodes and the operators between them "
        f"({', '.join(sorted(_SHAPE_OPS))}), not {node.op_type}")


class BackendRep(onnx.backend.base.BackendRep):
    """A prepared model: ``run(inputs)`` gives its outputs."""

    def __init__(self, model, backend):
        self.graph = model.graph
        self.backend = backend
        self.initializers = {t.name: numpy_helper.to_array(t)
                             for t in self.graph.initializer}
        self.input_names = [i.name for i in self.graph.input
                            if i.name not in self.initializers]
        for node in self.graph.node:  # every node understood before anything runs
            if node.op_type not in ("LSTM", "GRU", "RNN") and node.op_type not in _SHAPE_OPS:
                run_node_values(node, [], backend)  # raises, naming the node

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            env = dict(inputs)
        else:
            inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
            if len(inputs) != len(self.input_names):
                raise ValueError(f"inputs: expected {len(self.input_names)} arrays "
                                 f"({self.input_names}), got {len(inputs)}")
            env = dict(zip(self.input_names, inputs))
        missing = [n for n in self.input_names if n not in env]
        if missing:
            raise ValueError(f"inputs: missing {missing}")
        env.update(self.initializers)
        for node in self.graph.node:
            values = [env[name] if name else None for name in node.input]
            outputs = run_node_values(node, values, self.backend)
            for name, value in zip(node.output, outputs):
                if name:
                    env[name] = value
        return onnx.backend.base.namedtupledict(
            "Outputs", [o.name for o in self.graph.output])(
                *[env[o.name] for o in self.graph.output])


class Backend(onnx.backend.base.Backend):
    """Runs ONNX graphs of ``LSTM``, ``GRU`` and ``RNN`` nodes with fastrnn's backends: the
    cpu backend for ``device="CPU"``, the gpu backend for ``device="CUDA"``."""

    @classmethod
    def _backend(cls, device):
        kind = str(device).split(":")[0].upper()
        if kind not in _DEVICES:
            raise ValueError(f"device: expected 'CPU' or 'CUDA', got {device!r}")
        return _DEVICES[kind]

    @classmethod
    def supports_device(cls, device):
        try:
            name = cls._backend(device)
        except ValueError:
            return False
        return bool(dispatch.backends()[name]["available"])

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        onnx.checker.check_model(model)
        return BackendRep(model, cls._backend(device))

    @classmethod
    def run_node(cls, node, inputs, device="CPU", outputs_info=None, **kwargs):
        if isinstance(inputs, dict):
            values = [inputs.get(name) if name else None for name in node.input]
        else:
            values = list(inputs)
        outputs = run_node_values(node, values, cls._backend(device))
        names = [name for name in node.output if name]
        return onnx.backend.base.namedtupledict("Outputs", names)(
            *[v for name, v in zip(node.output, outputs) if name])


prepare = Backend.prepare
run_node = Backend.run_node
supports_device = Backend.supports_device
