"""Running ONNX ``LSTM``, ``GRU`` and ``RNN`` nodes with fastrnn's kernels, and the few
shape operators an exported network puts between them."""

import numpy as np

from .. import dispatch
from ..kernels.contract import Sequence, State
from ._convert import from_onnx


class UnsupportedNodeError(ValueError):
    """A node, attribute or input fastrnn cannot run; the message names it."""


def node_label(node):
    return f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node"


_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                        "RNN": ["Tanh"]}
_RNN_CELLS = {"Tanh": "rnn_tanh", "Relu": "rnn_relu", "Sigmoid": "rnn_sigmoid"}
_KNOWN = {"LSTM": {"hidden_size", "direction", "layout", "activations", "activation_alpha",
                   "activation_beta", "clip", "input_forget"},
          "GRU": {"hidden_size", "direction", "layout", "activations", "activation_alpha",
                  "activation_beta", "clip", "linear_before_reset"},
          "RNN": {"hidden_size", "direction", "layout", "activations", "activation_alpha",
                  "activation_beta", "clip"}}


def cell_for(node, attrs, D, peepholes=False):
    """fastrnn's cell for the node (``peepholes``: an LSTM node with nonzero ``P``), or
    :class:`UnsupportedNodeError`."""
    op = node.op_type
    for key in sorted(set(attrs) - _KNOWN[op]):
        raise UnsupportedNodeError(f"{node_label(node)}: unknown attribute {key!r}")
    for key in ("clip", "activation_alpha", "activation_beta"):
        if key in attrs:
            raise UnsupportedNodeError(
                f"{node_label(node)}: attribute {key!r} is not supported (fastrnn's cells do not "
                f"clip and take no activation parameters)")
    if attrs.get("input_forget", 0):
        raise UnsupportedNodeError(f"{node_label(node)}: attribute 'input_forget'=1 (coupled "
                                   "input and forget gates) is not supported")
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    if op == "RNN":
        acts = acts or ["Tanh"] * D
        if len(acts) != D or len(set(acts)) != 1 or acts[0] not in _RNN_CELLS:
            raise UnsupportedNodeError(
                f"{node_label(node)}: attribute 'activations'={acts}: expected one of "
                f"{sorted(_RNN_CELLS)}, the same for every direction")
        return _RNN_CELLS[acts[0]]
    if acts and acts != _DEFAULT_ACTIVATIONS[op] * D:
        raise UnsupportedNodeError(
            f"{node_label(node)}: attribute 'activations'={acts}: fastrnn's {op} runs "
            f"{_DEFAULT_ACTIVATIONS[op]} only")
    if op == "GRU":
        lbr = attrs.get("linear_before_reset", 0)
        if lbr not in (0, 1):
            raise UnsupportedNodeError(f"{node_label(node)}: attribute 'linear_before_reset'="
                                       f"{lbr}: expected 0 or 1")
        return "gru" if lbr else "gru_reset_before"
    return "lstm_peephole" if peepholes else "lstm"


def run_recurrent(node, attrs, inputs, backend):
    """Outputs ``(Y, Y_h[, Y_c])`` of an ``LSTM``/``GRU``/``RNN`` node; ``inputs`` in the
    node's order, None where absent."""
    op = node.op_type
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "reverse", "bidirectional"):
        raise UnsupportedNodeError(f"{node_label(node)}: attribute 'direction'={direction!r}")
    D = 2 if direction == "bidirectional" else 1
    layout = attrs.get("layout", 0)
    if layout not in (0, 1):
        raise UnsupportedNodeError(f"{node_label(node)}: attribute 'layout'={layout}")
    inputs = list(inputs) + [None] * (8 - len(inputs))
    X, W, R, B, seq_lens, init_h, init_c, P = inputs[:8]
    # (all-zero peepholes are the plain LSTM's equations: its faster cell runs them)
    cell = cell_for(node, attrs, D, peepholes=P is not None and bool(np.any(P)))
    if X is None or W is None or R is None:
        raise UnsupportedNodeError(f"{node_label(node)}: inputs X, W and R are required")
    if X.dtype not in (np.float32, np.float64):
        raise UnsupportedNodeError(f"{node_label(node)}: input X of type {X.dtype}: fastrnn runs "
                                   "float32 and float64")
    if "hidden_size" not in attrs:
        raise UnsupportedNodeError(f"{node_label(node)}: attribute 'hidden_size' is required")
    H = int(attrs["hidden_size"])
    dt = X.dtype
    x = np.ascontiguousarray(X.transpose(1, 0, 2) if layout else X)  # time-major
    T, Bn, _ = x.shape
    if W.shape[0] != D or R.shape[0] != D:
        raise UnsupportedNodeError(f"{node_label(node)}: W and R hold {W.shape[0]} direction(s), "
                                   f"direction={direction!r} needs {D}")
    peephole = cell == "lstm_peephole"
    if P is not None and tuple(P.shape) != (D, 3 * H):  # (all-zero ones too)
        raise UnsupportedNodeError(f"{node_label(node)}: input P of shape {tuple(P.shape)}: "
                                   f"expected {(D, 3 * H)}")
    lengths = None if seq_lens is None else np.asarray(seq_lens, np.int64)
    if init_h is not None and layout:
        init_h = init_h.transpose(1, 0, 2)
    if init_c is not None and layout:
        init_c = init_c.transpose(1, 0, 2)
    xp = dispatch.array_module_for(backend)
    _, kernel = dispatch.resolve(backend, xp)
    family = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}[op]
    ys, hs, cs = [], [], []
    for d in range(D):
        w = from_onnx(family, H, W[d].astype(dt), R[d].astype(dt),
                      None if B is None else B[d].astype(dt),
                      P[d].astype(dt) if peephole else None)
        h0 = np.zeros((Bn, H), dt) if init_h is None else np.ascontiguousarray(init_h[d], dt)
        c0 = None
        if op == "LSTM":
            c0 = np.zeros((Bn, H), dt) if init_c is None else np.ascontiguousarray(init_c[d],
                                                                                  dt)
        y, last, _ = kernel.forward(
            cell, xp.asarray(x), State(xp.asarray(h0), None if c0 is None else xp.asarray(c0)),
            w.map(xp.asarray), Sequence(lengths, direction == "reverse" or d == 1),
            training=False)
        ys.append(y), hs.append(last.h), cs.append(last.c)
    Y = xp.stack(ys, axis=1)  # [T, D, B, H]
    Y_h = xp.stack(hs)
    out = [Y.transpose(2, 0, 1, 3) if layout else Y,
           Y_h.transpose(1, 0, 2) if layout else Y_h]
    if op == "LSTM":
        Y_c = xp.stack(cs)
        out.append(Y_c.transpose(1, 0, 2) if layout else Y_c)
    return [_host(o) for o in out]


def _host(a):
    return a if isinstance(a, np.ndarray) else a.get()
