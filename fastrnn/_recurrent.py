"""What the recurrent layers and their one-step cells share: parameters with PyTorch's
names and initialisation, input checks, the guard between forward and backward, BPTT
through :func:`fastrnn.functional.rnn_backward`."""

import math
import warnings

import numpy as np

from . import dispatch, functional
from ._checks import check_array, flag, float_dtype, positive_int, probability
from .kernels.cells import get_cell
from .kernels.contract import (INITIAL_VALUES, PARAMETER_NAMES, Weights, weight_fields,
                               weight_shapes)
from .kernels.quantize import FIELDS as QUANTIZED_FIELDS
from .kernels.quantize import Quantized, quantize
from .module import Module, backend_after_move

_RNN_CELLS = {"tanh": "rnn_tanh", "relu": "rnn_relu", "sigmoid": "rnn_sigmoid"}
_FIELD_INDEX = {field: i for i, field in enumerate(Weights._fields)}


def gru_cell_name(reset_after):
    """fastrnn's cell name for a GRU: ``reset_after`` True (PyTorch's and cuDNN's form, the
    reset gate applied to the recurrent product) or False (applied to the state before it:
    Keras ``reset_after=False``, ONNX ``linear_before_reset=0``)."""
    if not isinstance(reset_after, bool):
        raise TypeError(f"reset_after: expected True or False, got {reset_after!r}")
    return "gru" if reset_after else "gru_reset_before"


def lstm_cell_name(peepholes):
    """fastrnn's cell name for an LSTM with or without ``peepholes`` (the input and forget
    gates also see ``c_{t-1}``, the output gate ``c_t``)."""
    if not isinstance(peepholes, bool):
        raise TypeError(f"peepholes: expected True or False, got {peepholes!r}")
    return "lstm_peephole" if peepholes else "lstm"


def checked_proj_size(proj_size, hidden_size):
    """``proj_size`` as an int in ``[0, hidden_size)``, or a clear error (PyTorch's rule)."""
    if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)):
        raise TypeError(f"proj_size: expected an integer, got {proj_size!r}")
    if not 0 <= proj_size < hidden_size:
        raise ValueError(f"proj_size: expected 0 (no projection) or a size smaller than "
                         f"hidden_size={hidden_size}, got {proj_size}")
    return int(proj_size)


def rnn_cell_name(nonlinearity):
    """fastrnn's cell name for a vanilla RNN's ``nonlinearity``, or a clear error."""
    if nonlinearity not in _RNN_CELLS:
        raise ValueError(
            f"nonlinearity: expected one of {list(_RNN_CELLS)}, got {nonlinearity!r}")
    return _RNN_CELLS[nonlinearity]


def split_pair(name, pair):
    """``(h, c)`` from an LSTM's state argument (None: both None), or a clear error."""
    if pair is None:
        return None, None
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name}: expected a tuple (h, c) (either may be None), got "
                        f"{type(pair).__name__}")
    return pair[0], pair[1]


class BackwardGuard:
    """Remembers what the last forward left for backward, to give clear errors."""

    def __init__(self):
        self.ctx = None
        self.state = "none"  # none | train | eval | used

    def record(self, ctx, training):
        self.ctx, self.state = (ctx, "train") if training else (None, "eval")

    def peek(self, who):
        """The saved context, or a clear error; a failed check of the gradients that
        follows leaves it in place, so a corrected call can still run."""
        if self.state == "none":
            raise RuntimeError(f"{who}.backward() called before any forward call")
        if self.state == "eval":
            raise RuntimeError(
                f"{who}.backward(): the last forward ran in eval mode, which saves nothing "
                "for backward; call .train() and run forward again")
        if self.state == "used":
            raise RuntimeError(
                f"{who}.backward() called twice for one forward; run forward again first")
        return self.ctx

    def consume(self):
        self.ctx, self.state = None, "used"


class RecurrentBase(Module):
    """Parameters, checks and BPTT shared by the sequence layers and the step cells."""

    def _setup(self, cell, input_size, hidden_size, *, num_layers=1, bias=True,
               batch_first=False, dropout=0.0, bidirectional=False, dtype, backend, seed,
               layer_suffix=True, proj_size=0, layer_norm=False, zoneout=0.0):
        super().__init__()
        self.cell = get_cell(cell).name
        self.input_size = positive_int("input_size", input_size)
        self.hidden_size = positive_int("hidden_size", hidden_size)
        self.proj_size = checked_proj_size(proj_size, self.hidden_size)
        self.num_layers = positive_int("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        dropout = probability("dropout", dropout)
        if dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout acts between layers, so it has no effect with "
                          f"num_layers=1 (got dropout={dropout})", stacklevel=3)
        self.dropout = dropout
        if flag("layer_norm", layer_norm) and get_cell(cell).reset_before:
            raise ValueError("layer_norm: not defined for the GRU with reset_after=False (its "
                             "reset gate acts inside the recurrent product)")
        self.layer_norm = layer_norm
        self.zoneout = probability("zoneout", zoneout)
        self.dtype = float_dtype(dtype)
        self.backend = backend
        xp = dispatch.array_module_for(backend)
        self._rng = np.random.default_rng(seed)
        H, D, S = self.hidden_size, self.num_directions, self.state_size
        bound = 1.0 / math.sqrt(H)
        self._groups = []  # per layer and direction: {Weights field: parameter name}
        for layer in range(self.num_layers):
            for d in range(D):
                suffix = f"_l{layer}" + ("_reverse" if d else "") if layer_suffix else ""
                shapes = weight_shapes(cell, self.input_size if layer == 0 else D * S, H,
                                       self.proj_size)
                group = {}
                for field in weight_fields(cell, self.bias, self.proj_size > 0, layer_norm):
                    group[field] = PARAMETER_NAMES[field] + suffix
                    if field in INITIAL_VALUES:  # (draws nothing: the others as without)
                        values = np.full(shapes[field], INITIAL_VALUES[field])
                    else:
                        values = self._rng.uniform(-bound, bound, shapes[field])
                    self.register_parameter(group[field],
                                            xp.asarray(values.astype(self.dtype)))
                self._groups.append(group)
        self._guard = BackwardGuard()

    def _after_to(self, device, xp, dtype):
        self.backend = backend_after_move(self.backend, device)
        if dtype is not None:
            self.dtype = dtype
        self._guard = BackwardGuard()

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def state_size(self):
        """The size of the state ``h`` and of each direction's output: ``proj_size`` when
        there is a projection, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    @property
    def peepholes(self):
        """Whether the LSTM's gates see the cell state (parameters ``peephole_l{k}``)."""
        return get_cell(self.cell).peepholes

    def _weights(self):
        """The :class:`Weights` of :func:`fastrnn.functional.rnn`, one per layer and
        direction (a quantized layer's matrices as :class:`~.kernels.quantize.Quantized`)."""
        params = self._parameters
        if self.quantized:
            return self._quantized_weights()
        weights = []
        for group in self._groups:  # (positionally: a call's hot path)
            values = [None] * len(Weights._fields)
            for field, name in group.items():
                values[_FIELD_INDEX[field]] = params[name].data
            weights.append(Weights._make(values))
        return weights

    # -- low-precision inference (fastrnn.quantize) --

    quantized = None  # "int8" or "bfloat16" once quantized (fastrnn.quantize)

    def _quantize(self, fmt):
        """Hold ``w_ih``, ``w_hh`` (and ``w_hr``) in the low-precision format ``fmt`` from
        now on, as buffers of the same names (int8's scales as ``<name>_scale``): what
        :func:`fastrnn.quantize` does to each recurrent layer of its copy."""
        who = type(self).__name__
        if self.quantized:
            raise ValueError(f"{who}: already quantized ({self.quantized})")
        if self.dtype != np.float32:
            raise TypeError(f"{who}: quantize a float32 layer (this one is {self.dtype}); "
                            "convert it with .float() first")
        if dispatch.array_module(*(p.data for p in self._parameters.values())) is not np:
            raise ValueError(f"{who}: quantized layers run on the CPU; move the layer with "
                             ".to('cpu') first")
        for group in self._groups:
            for field in QUANTIZED_FIELDS:
                if field in group:
                    name = group[field]
                    q = quantize(self._parameters.pop(name).data, fmt, name)
                    self.register_buffer(name, q.values)
                    if q.scale is not None:
                        self.register_buffer(name + "_scale", q.scale)
        self.quantized = fmt
        self._guard = BackwardGuard()

    def _quantized_weights(self):
        params, buffers, fmt = self._parameters, self._buffers, self.quantized
        weights = []
        for group in self._groups:
            values = {}
            for field, name in group.items():
                if field in QUANTIZED_FIELDS:
                    values[field] = Quantized(buffers[name], buffers.get(name + "_scale"), fmt)
                else:
                    values[field] = params[name].data
            weights.append(Weights(**values))
        return weights

    def _inference_only(self):
        """A clear error for training a quantized layer."""
        raise RuntimeError(f"{type(self).__name__}: a quantized ({self.quantized}) layer runs "
                           "inference only; call .eval() (training and backward need the "
                           "float32 layer)")

    def _check_to(self, device, dtype):
        if self.quantized and (device == "gpu" or (dtype is not None and dtype != np.float32)):
            raise ValueError(f"{type(self).__name__}: a quantized ({self.quantized}) layer "
                             "runs float32 on the CPU; to() cannot move it to the GPU or "
                             "change its dtype")

    def _accumulate(self, grads):
        """Add :func:`fastrnn.functional.rnn_backward`'s weight gradients to the
        parameters' ``.grad``."""
        params = self._parameters
        for group, g in zip(self._groups, grads, strict=True):
            for field, name in group.items():
                params[name].accumulate(getattr(g, field))

    def _param_module(self):
        if self.quantized:  # (it may have no parameters left; it runs on the CPU)
            return np
        return dispatch.array_module(next(iter(self._parameters.values())).data)

    def _check_input(self, x, xp, ranks=(2, 3)):
        got = dispatch.array_module(x, names=["x"])
        if got is not xp:
            raise TypeError(f"x: this layer's parameters are {xp.__name__} arrays, got a "
                            f"{got.__name__} array; move the input or the layer")
        check_array("x", x, ranks, self.dtype)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected {self.input_size} input features (input_size) in "
                             f"the last dimension, got shape {tuple(x.shape)}")

    def _bptt(self, ctx, grad_output, grad_h_n, grad_c_n):
        """:func:`functional.rnn_backward`, its changed-weight error naming the parameter."""
        try:
            return functional.rnn_backward(ctx, grad_output, grad_h_n, grad_c_n)
        except functional.WeightChangedError as err:
            k, field = err.index
            name = self._groups[k][field]
            raise RuntimeError(
                f"{type(self).__name__}.backward(): parameter {name!r} was changed in place "
                "after the forward call, so the gradients would not match the outputs; run "
                "forward again after changing weights (an optimizer step belongs after "
                "backward)") from None

    def _picklable(self):
        return {"_guard": BackwardGuard()}

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.batch_first:
            s += ", batch_first=True"
        if get_cell(self.cell).reset_before:
            s += ", reset_after=False"
        if self.peepholes:
            s += ", peepholes=True"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.layer_norm:
            s += ", layer_norm=True"
        if self.zoneout:
            s += f", zoneout={self.zoneout}"
        if self.quantized:
            s += f", quantized={self.quantized!r}"
        return s + f", dtype={self.dtype}"

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)
