"""``RNN``, ``LSTM``, ``GRU`` and their one-step cells, with PyTorch's arguments and names.

Training mirrors the call: ``output, h_n = layer(x)`` then
``grad_x, grad_h0 = layer.backward(grad_output, grad_h_n)`` runs BPTT and accumulates every
parameter's ``.grad``.
"""

import math
import warnings

import numpy as np

from . import dispatch, functional
from ._checks import check_array, float_dtype
from .kernels.cells import get_cell
from .module import Module, backend_after_move

_RNN_CELLS = {"tanh": "rnn_tanh", "relu": "rnn_relu", "sigmoid": "rnn_sigmoid"}


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _rnn_cell_name(nonlinearity):
    if nonlinearity not in _RNN_CELLS:
        raise ValueError(
            f"nonlinearity: expected one of {list(_RNN_CELLS)}, got {nonlinearity!r}")
    return _RNN_CELLS[nonlinearity]


class _BackwardGuard:
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


class _Recurrent(Module):
    """Shared construction, parameters and forward/backward of the sequence layers."""

    def _setup(self, cell, input_size, hidden_size, num_layers, bias, batch_first, dropout,
               bidirectional, dtype, backend, seed, layer_suffix=True):
        super().__init__()
        self.cell = get_cell(cell).name
        self.input_size = _positive_int("input_size", input_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not (
                0 <= dropout < 1):
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        if dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout acts between layers, so it has no effect with "
                          f"num_layers=1 (got dropout={dropout})", stacklevel=3)
        self.dropout = float(dropout)
        self.dtype = float_dtype(dtype)
        self.backend = backend
        xp = dispatch.array_module_for(backend)
        self._rng = np.random.default_rng(seed)
        G, H, D = get_cell(cell).gates, self.hidden_size, self.num_directions
        bound = 1.0 / math.sqrt(H)
        for layer in range(self.num_layers):
            for d in range(D):
                suffix = f"_l{layer}" + ("_reverse" if d else "") if layer_suffix else ""
                in_size = self.input_size if layer == 0 else D * H
                shapes = [("weight_ih", (G * H, in_size)), ("weight_hh", (G * H, H))]
                if self.bias:
                    shapes += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
                for name, shape in shapes:
                    values = self._rng.uniform(-bound, bound, shape).astype(self.dtype)
                    self.register_parameter(name + suffix, xp.asarray(values))
        self._guard = _BackwardGuard()

    def _after_to(self, device, xp, dtype):
        self.backend = backend_after_move(self.backend, device)
        if dtype is not None:
            self.dtype = dtype
        self._guard = _BackwardGuard()

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def _weights(self):
        params = list(self._parameters.values())
        per = 4 if self.bias else 2
        groups = []
        for k in range(0, len(params), per):
            ws = [p.data for p in params[k:k + per]]
            groups.append(tuple(ws) if self.bias else (ws[0], ws[1], None, None))
        return groups

    def _param_module(self):
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

    def _to_time_major(self, a):
        if a.ndim == 2:
            return a[:, None, :]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def _from_time_major(self, a, unbatched):
        if unbatched:
            return a[:, 0, :]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def _state_in(self, name, s, B, unbatched):
        if s is None:
            return None
        LD, H = self.num_layers * self.num_directions, self.hidden_size
        check_array(name, s, 2 if unbatched else 3, self.dtype,
                    (LD, H) if unbatched else (LD, B, H))
        return s[:, None, :] if unbatched else s

    def _run(self, x, h0, c0, lengths):
        xp = self._param_module()
        self._check_input(x, xp)
        unbatched = x.ndim == 2
        if unbatched and lengths is not None:
            raise ValueError("lengths: not accepted with an unbatched (2-D) input; add a "
                             "batch dimension")
        x_tm = self._to_time_major(x)
        B = x_tm.shape[1]
        h0 = self._state_in("hx" if c0 is None else "hx[0]", h0, B, unbatched)
        c0 = self._state_in("hx[1]", c0, B, unbatched)
        out, h_n, c_n, ctx = functional.rnn(
            self.cell, x_tm, self._weights(), h0, c0, num_layers=self.num_layers,
            bidirectional=self.bidirectional, lengths=lengths, dropout=self.dropout,
            training=self.training, rng=self._rng, backend=self.backend)
        out = self._from_time_major(out, unbatched)
        if unbatched:
            h_n = h_n[:, 0, :]
            c_n = None if c_n is None else c_n[:, 0, :]
        self._guard.record(ctx and dict(ctx=ctx, unbatched=unbatched, shape=out.shape),
                           self.training)
        return out, h_n, c_n

    def _run_backward(self, grad_output, grad_h_n, grad_c_n):
        saved = self._guard.peek(type(self).__name__)
        unbatched = saved["unbatched"]
        check_array("grad_output", grad_output, len(saved["shape"]), self.dtype,
                    saved["shape"])
        B = 1 if unbatched else grad_output.shape[0 if self.batch_first else 1]
        grad_h_n = self._state_in("grad_h_n", grad_h_n, B, unbatched)
        grad_c_n = self._state_in("grad_c_n", grad_c_n, B, unbatched)
        dx, dh0, dc0, dws = self._bptt(saved["ctx"], self._to_time_major(grad_output),
                                       grad_h_n, grad_c_n)
        self._guard.consume()
        params = list(self._parameters.values())
        per = 4 if self.bias else 2
        for k, group in enumerate(dws):
            for p, g in zip(params[k * per:(k + 1) * per], group):
                p.accumulate(g)
        dx = self._from_time_major(dx, unbatched)
        if unbatched:
            dh0 = dh0[:, 0, :]
            dc0 = None if dc0 is None else dc0[:, 0, :]
        return dx, dh0, dc0

    def _bptt(self, ctx, grad_output, grad_h_n, grad_c_n):
        """:func:`functional.rnn_backward`, its changed-weight error naming the parameter."""
        try:
            return functional.rnn_backward(ctx, grad_output, grad_h_n, grad_c_n)
        except functional.WeightChangedError as err:
            k, j = err.index
            name = list(self._parameters)[k * (4 if self.bias else 2) + j]
            raise RuntimeError(
                f"{type(self).__name__}.backward(): parameter {name!r} was changed in place "
                "after the forward call, so the gradients would not match the outputs; run "
                "forward again after changing weights (an optimizer step belongs after "
                "backward)") from None

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.batch_first:
            s += ", batch_first=True"
        return s + f", dtype={self.dtype}"

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


_DOC_ARGS = """
    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    bias : bool, default True
    batch_first : bool, default False
        Inputs and outputs are ``[B,T,*]`` instead of ``[T,B,*]``.
    dropout : float, default 0
        Dropout on the outputs of every layer but the last, in training mode.
    bidirectional : bool, default False
    dtype : float32 (default) or float64
    backend : str, optional
        ``"numpy"``, ``"cpu"``, ``"gpu"`` or ``"auto"``; None follows
        :func:`fastrnn.set_backend`, then ``FASTRNN_BACKEND``, then ``auto``.
    seed : int, optional
        Seeds the initialisation (PyTorch's ``U(-1/sqrt(H), 1/sqrt(H))``) and dropout.
"""


class RNN(_Recurrent):
    __doc__ = """Elman RNN, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, as ``torch.nn.RNN``.

    Call ``output, h_n = rnn(x, hx=None, lengths=None)`` with ``x [T,B,I]`` (``[B,T,I]`` if
    batch_first, ``[T,I]`` unbatched) and ``hx [L*D,B,H]``. ``nonlinearity`` is ``"tanh"``,
    ``"relu"`` or ``"sigmoid"``.
    """ + _DOC_ARGS

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32,
                 backend=None, seed=None):
        self.nonlinearity = nonlinearity
        self._setup(_rnn_cell_name(nonlinearity), input_size, hidden_size, num_layers, bias,
                    batch_first, dropout, bidirectional, dtype, backend, seed)

    def forward(self, x, hx=None, lengths=None):
        out, h_n, _ = self._run(x, hx, None, lengths)
        return out, h_n

    def backward(self, grad_output, grad_h_n=None):
        """BPTT; returns ``(grad_x, grad_h0)`` and accumulates parameter gradients."""
        dx, dh0, _ = self._run_backward(grad_output, grad_h_n, None)
        return dx, dh0


class GRU(RNN):
    __doc__ = """Gated recurrent unit as ``torch.nn.GRU`` (gates r, z, n).

    Call ``output, h_n = gru(x, hx=None, lengths=None)``; shapes as :class:`RNN`.
    """ + _DOC_ARGS

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, backend=None, seed=None):
        self._setup("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                    bidirectional, dtype, backend, seed)


def _split_pair(name, pair):
    if pair is None:
        return None, None
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"{name}: expected a tuple (h, c) (either may be None), got "
                        f"{type(pair).__name__}")
    return pair[0], pair[1]


class LSTM(_Recurrent):
    __doc__ = """Long short-term memory as ``torch.nn.LSTM`` (gates i, f, g, o).

    Call ``output, (h_n, c_n) = lstm(x, (h0, c0)=None, lengths=None)``; shapes as
    :class:`RNN`. ``backward(grad_output, (grad_h_n, grad_c_n))`` returns
    ``grad_x, (grad_h0, grad_c0)``.
    """ + _DOC_ARGS

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, backend=None, seed=None):
        self._setup("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                    bidirectional, dtype, backend, seed)

    def forward(self, x, hx=None, lengths=None):
        h0, c0 = _split_pair("hx", hx)
        if (h0 is None) != (c0 is None):
            raise TypeError("hx: expected both h0 and c0, or hx=None")
        out, h_n, c_n = self._run(x, h0, c0, lengths)
        return out, (h_n, c_n)

    def backward(self, grad_output, grad_hx=None):
        """BPTT; returns ``(grad_x, (grad_h0, grad_c0))`` and accumulates gradients."""
        gh, gc = _split_pair("grad_hx", grad_hx)
        dx, dh0, dc0 = self._run_backward(grad_output, gh, gc)
        return dx, (dh0, dc0)
