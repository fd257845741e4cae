"""``RNNCell``, ``LSTMCell``, ``GRUCell``: one time step at a time, as in PyTorch.

Each training-mode call saves what its backward needs on a stack; ``backward`` takes the
newest, so BPTT by hand calls ``backward`` once per step in reverse order. Generation that
needs no gradients should run in ``eval()`` mode, which saves nothing.
"""

import numpy as np

from . import dispatch, functional
from ._checks import check_array
from ._recurrent import (RecurrentBase, gru_cell_name, lstm_cell_name, rnn_cell_name,
                         split_pair)
from .kernels.cells import get_cell
from .kernels.contract import State


class _StepCell(RecurrentBase):
    def __init__(self, cell, input_size, hidden_size, bias, dtype, backend, seed,
                 layer_norm=False, zoneout=0.0):
        self._setup(cell, input_size, hidden_size, bias=bias, dtype=dtype, backend=backend,
                    seed=seed, layer_suffix=False, layer_norm=layer_norm, zoneout=zoneout)
        self._stack = []
        self._last_eval = False

    def _after_to(self, device, xp, dtype):
        super()._after_to(device, xp, dtype)
        self._stack.clear()

    def _picklable(self):
        return {**super()._picklable(), "_stack": []}

    def _state(self, name, s, x):
        if s is None:
            return None
        shape = (self.hidden_size,) if x.ndim == 1 else (x.shape[0], self.hidden_size)
        check_array(name, s, x.ndim, self.dtype, shape)
        return s.reshape(1, 1, -1) if x.ndim == 1 else s[None]

    def _step(self, x, h, c, names):
        if self.quantized and self.training:
            self._inference_only()
        xp = self._param_module()
        self._check_input(x, xp, ranks=(1, 2))
        h0, c0 = self._state(names[0], h, x), self._state(names[1], c, x)
        x3 = x.reshape(1, 1, -1) if x.ndim == 1 else x[None]
        if self.training:
            _, h_n, c_n, ctx = functional.rnn(self.cell, x3, self._weights(), h0, c0,
                                              zoneout=self.zoneout, rng=self._rng,
                                              backend=self.backend)
        else:  # (inference, whose arguments are checked above: straight to the kernels)
            h_n, c_n = self._infer(xp, x3, h0, c0)
        self._last_eval = not self.training
        if self.training:
            self._stack.append((ctx, x.ndim))
        shape = (self.hidden_size,) if x.ndim == 1 else h_n.shape[1:]
        return h_n.reshape(shape), None if c_n is None else c_n.reshape(shape)

    def _infer(self, xp, x3, h0, c0):
        """One step without saving, on the backend's kernel contract: ``h_n, c_n [1,B,H]``
        (``c_n`` None but for the LSTM)."""
        kernel = dispatch.resolve(self.backend, xp)[1]
        B = x3.shape[1]
        h = xp.zeros((B, self.hidden_size), self.dtype) if h0 is None else h0[0]
        c = None
        if get_cell(self.cell).has_cell_state:
            c = xp.zeros((B, self.hidden_size), self.dtype) if c0 is None else c0[0]
        extra = {}
        if self.zoneout:  # (eval: the expectation, h' = p h + (1 - p) h~)
            extra["zoneout"] = xp.full((1, B, self.hidden_size), self.zoneout, self.dtype)
        _, last, _ = kernel.forward(self.cell, x3, State(h, c), self._weights()[0],
                                    training=False, **extra)
        return last.h[None], None if last.c is None else last.c[None]

    def _step_backward(self, grad_h, grad_c):
        if self.quantized:
            self._inference_only()
        who = type(self).__name__
        if not self._stack:
            if self._last_eval:
                raise RuntimeError(f"{who}.backward(): the last call ran in eval mode, which "
                                   "saves nothing; call .train() and run the step again")
            raise RuntimeError(f"{who}.backward() called more times than the cell was called "
                               "in training mode")
        ctx, ndim = self._stack[-1]  # popped only once the gradients pass their checks
        _, B, _ = ctx["shape"]
        shape = (self.hidden_size,) if ndim == 1 else (B, self.hidden_size)
        xp = self._param_module()
        lifted = []
        for name, g in (("grad_h", grad_h), ("grad_c", grad_c)):
            if g is not None:
                check_array(name, g, ndim, self.dtype, shape)
                g = g.reshape(1, B, self.hidden_size)
            lifted.append(g)
        dy = xp.zeros((1, B, self.hidden_size), self.dtype)
        dx, dh0, dc0, dws = self._bptt(ctx, dy, *lifted)
        self._stack.pop()
        self._accumulate(dws)
        in_shape = (self.input_size,) if ndim == 1 else (B, self.input_size)
        return dx.reshape(in_shape), dh0.reshape(shape), None if dc0 is None else dc0.reshape(
            shape)


class _OneStateCell(_StepCell):
    """forward and backward of the cells with one state (RNNCell, GRUCell)."""

    def forward(self, x, hx=None):
        return self._step(x, hx, None, ("hx", None))[0]

    def backward(self, grad_h):
        """Returns ``(grad_x, grad_h_prev)`` and accumulates parameter gradients."""
        dx, dh, _ = self._step_backward(grad_h, None)
        return dx, dh


class RNNCell(_OneStateCell):
    """One step of an Elman RNN: ``h' = cell(x, h=None)`` with ``x [B,I]`` or ``[I]``.

    ``backward(grad_h)`` returns ``(grad_x, grad_h_prev)``. Parameters ``weight_ih``,
    ``weight_hh``, ``bias_ih``, ``bias_hh`` as in ``torch.nn.RNNCell``. ``layer_norm``,
    ``zoneout``: see :class:`fastrnn.LSTM` (parameters ``ln_weight_ih``, ...).
    """

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh",
                 dtype=np.float32, backend=None, seed=None, layer_norm=False, zoneout=0.0):
        self.nonlinearity = nonlinearity
        super().__init__(rnn_cell_name(nonlinearity), input_size, hidden_size, bias, dtype,
                         backend, seed, layer_norm, zoneout)


class GRUCell(_OneStateCell):
    """One step of a GRU: ``h' = cell(x, h=None)``; as ``torch.nn.GRUCell``.
    ``reset_after``: see :class:`fastrnn.GRU`."""

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, backend=None,
                 seed=None, reset_after=True, layer_norm=False, zoneout=0.0):
        super().__init__(gru_cell_name(reset_after), input_size, hidden_size, bias, dtype,
                         backend, seed, layer_norm, zoneout)

    @property
    def reset_after(self):
        return not get_cell(self.cell).reset_before


class LSTMCell(_StepCell):
    """One step of an LSTM: ``h', c' = cell(x, (h, c)=None)``; as ``torch.nn.LSTMCell``.

    ``backward((grad_h, grad_c))`` (either may be None) returns
    ``(grad_x, (grad_h_prev, grad_c_prev))``. ``peepholes``: see :class:`fastrnn.LSTM`
    (the parameter is ``peephole``).
    """

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, backend=None,
                 seed=None, peepholes=False, layer_norm=False, zoneout=0.0):
        super().__init__(lstm_cell_name(peepholes), input_size, hidden_size, bias, dtype,
                         backend, seed, layer_norm, zoneout)

    def forward(self, x, hx=None):
        h, c = split_pair("hx", hx)
        if (h is None) != (c is None):
            raise TypeError("hx: expected both h and c, or hx=None")
        return self._step(x, h, c, ("hx[0]", "hx[1]"))

    def backward(self, grad_hx):
        gh, gc = split_pair("grad_hx", grad_hx)
        dx, dh, dc = self._step_backward(gh, gc)
        return dx, (dh, dc)
