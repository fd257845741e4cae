"""``RNN``, ``LSTM``, ``GRU``: sequence layers with PyTorch's arguments and names.

Training mirrors the call: ``output, h_n = layer(x)`` then
``grad_x, grad_h0 = layer.backward(grad_output, grad_h_n)`` runs BPTT and accumulates every
parameter's ``.grad``.
"""

import numpy as np

from . import functional
from ._checks import check_array
from ._recurrent import (RecurrentBase, gru_cell_name, lstm_cell_name, rnn_cell_name,
                         split_pair)
from .kernels.cells import get_cell


class _Sequence(RecurrentBase):
    """Layouts, states and lengths of whole sequences (the three layers' shared part)."""

    def _to_time_major(self, a):
        if a.ndim == 2:
            return a[:, None, :]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def _from_time_major(self, a, unbatched):
        if unbatched:
            return a[:, 0, :]
        return a.transpose(1, 0, 2) if self.batch_first else a

    def _state_in(self, name, s, B, unbatched, cell_state=False):
        """A state (or a state's gradient) checked and made batched: ``[L*D,B,S]``, or
        ``[L*D,B,H]`` for the LSTM's cell state."""
        if s is None:
            return None
        LD = self.num_layers * self.num_directions
        H = self.hidden_size if cell_state else self.state_size
        check_array(name, s, 2 if unbatched else 3, self.dtype,
                    (LD, H) if unbatched else (LD, B, H))
        return s[:, None, :] if unbatched else s

    def _run(self, x, h0, c0, lengths):
        if self.quantized and self.training:
            self._inference_only()
        xp = self._param_module()
        self._check_input(x, xp)
        unbatched = x.ndim == 2
        if unbatched and lengths is not None:
            raise ValueError("lengths: not accepted with an unbatched (2-D) input; add a "
                             "batch dimension")
        x_tm = self._to_time_major(x)
        B = x_tm.shape[1]
        h0 = self._state_in("hx" if c0 is None else "hx[0]", h0, B, unbatched)
        c0 = self._state_in("hx[1]", c0, B, unbatched, cell_state=True)
        out, h_n, c_n, ctx = functional.rnn(
            self.cell, x_tm, self._weights(), h0, c0, num_layers=self.num_layers,
            bidirectional=self.bidirectional, lengths=lengths, dropout=self.dropout,
            zoneout=self.zoneout, training=self.training, rng=self._rng,
            backend=self.backend)
        out = self._from_time_major(out, unbatched)
        if unbatched:
            h_n = h_n[:, 0, :]
            c_n = None if c_n is None else c_n[:, 0, :]
        self._guard.record(ctx and dict(ctx=ctx, unbatched=unbatched, shape=out.shape),
                           self.training)
        return out, h_n, c_n

    def _run_backward(self, grad_output, grad_h_n, grad_c_n):
        if self.quantized:
            self._inference_only()
        saved = self._guard.peek(type(self).__name__)
        unbatched = saved["unbatched"]
        check_array("grad_output", grad_output, len(saved["shape"]), self.dtype,
                    saved["shape"])
        B = 1 if unbatched else grad_output.shape[0 if self.batch_first else 1]
        grad_h_n = self._state_in("grad_h_n", grad_h_n, B, unbatched)
        grad_c_n = self._state_in("grad_c_n", grad_c_n, B, unbatched, cell_state=True)
        dx, dh0, dc0, dws = self._bptt(saved["ctx"], self._to_time_major(grad_output),
                                       grad_h_n, grad_c_n)
        self._guard.consume()
        self._accumulate(dws)
        dx = self._from_time_major(dx, unbatched)
        if unbatched:
            dh0 = dh0[:, 0, :]
            dc0 = None if dc0 is None else dc0[:, 0, :]
        return dx, dh0, dc0

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
        Seeds the initialisation (PyTorch's ``U(-1/sqrt(H), 1/sqrt(H))``), dropout and
        zoneout.
    layer_norm : bool, default False
        Layer normalisation inside the cell (Ba et al. 2016): ``LN(W_ih x)`` and ``LN(W_hh
        h)`` replace the two products (each over all ``G*H`` pre-activations, with gains
        ``ln_weight_ih_l{k}``, ``ln_weight_hh_l{k}`` initialised to 1, before the biases);
        the LSTMs output ``o * tanh(LN(c'))`` with gain ``ln_weight_c_l{k}`` (1) and bias
        ``ln_bias_c_l{k}`` (0) and carry the un-normalised ``c'``. Not defined for the GRU
        with ``reset_after=False``. ``LN(v) = (v - mean) / sqrt(var + 1e-5)``.
    zoneout : float, default 0
        Zoneout rate ``p`` on ``h`` (Krueger et al. 2016): in training every unit keeps
        its previous state with probability ``p`` at each step, ``h_t = m * h_{t-1} + (1 -
        m) * h~_t``; in eval ``h_t = p * h_{t-1} + (1 - p) * h~_t``. The output at step
        ``t`` is ``h_t``; the LSTMs' ``c`` is not zoned out.
"""


class _OneState(_Sequence):
    """forward and backward of the layers with one state (RNN, GRU)."""

    def forward(self, x, hx=None, lengths=None):
        out, h_n, _ = self._run(x, hx, None, lengths)
        return out, h_n

    def backward(self, grad_output, grad_h_n=None):
        """BPTT; returns ``(grad_x, grad_h0)`` and accumulates parameter gradients."""
        dx, dh0, _ = self._run_backward(grad_output, grad_h_n, None)
        return dx, dh0


class RNN(_OneState):
    __doc__ = """Elman RNN, ``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, as ``torch.nn.RNN``.

    Call ``output, h_n = rnn(x, hx=None, lengths=None)`` with ``x [T,B,I]`` (``[B,T,I]`` if
    batch_first, ``[T,I]`` unbatched) and ``hx [L*D,B,H]``. ``nonlinearity`` is ``"tanh"``,
    ``"relu"`` or ``"sigmoid"``.
    """ + _DOC_ARGS

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, dtype=np.float32,
                 backend=None, seed=None, layer_norm=False, zoneout=0.0):
        self.nonlinearity = nonlinearity
        self._setup(rnn_cell_name(nonlinearity), input_size, hidden_size, num_layers=num_layers,
                    bias=bias, batch_first=batch_first, dropout=dropout,
                    bidirectional=bidirectional, dtype=dtype, backend=backend, seed=seed,
                    layer_norm=layer_norm, zoneout=zoneout)


class GRU(_OneState):
    __doc__ = """Gated recurrent unit as ``torch.nn.GRU`` (gates r, z, n).

    Call ``output, h_n = gru(x, hx=None, lengths=None)``; shapes as :class:`RNN`.
    ``reset_after=False`` applies the reset gate to the state before the recurrent product,
    ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)`` (Keras ``reset_after=False``, ONNX
    ``linear_before_reset=0``); the default is PyTorch's and cuDNN's form,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``. Both have the same parameters.
    """ + _DOC_ARGS

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, backend=None, seed=None,
                 reset_after=True, layer_norm=False, zoneout=0.0):
        self._setup(gru_cell_name(reset_after), input_size, hidden_size, num_layers=num_layers,
                    bias=bias, batch_first=batch_first, dropout=dropout,
                    bidirectional=bidirectional, dtype=dtype, backend=backend, seed=seed,
                    layer_norm=layer_norm, zoneout=zoneout)

    @property
    def reset_after(self):
        return not get_cell(self.cell).reset_before


class LSTM(_Sequence):
    __doc__ = """Long short-term memory as ``torch.nn.LSTM`` (gates i, f, g, o).

    Call ``output, (h_n, c_n) = lstm(x, (h0, c0)=None, lengths=None)``; shapes as
    :class:`RNN`. ``backward(grad_output, (grad_h_n, grad_c_n))`` returns
    ``grad_x, (grad_h0, grad_c0)``.

    ``peepholes=True`` lets the gates see the cell state through diagonal weights (ONNX's
    ``P``, TensorFlow's ``use_peepholes``): ``i`` and ``f`` add ``p_i * c_{t-1}`` and
    ``p_f * c_{t-1}`` to their pre-activations, ``o`` adds ``p_o * c_t``; the weights are
    the parameters ``peephole_l{k}[_reverse]`` of shape ``[3, H]`` (rows i, f, o), after
    each layer's biases, initialised like the others. PyTorch has no such LSTM.

    ``proj_size=P`` (``0 < P < hidden_size``) projects the state as ``torch.nn.LSTM``
    does: ``h_t = W_hr (o_t * tanh(c_t))`` with the parameter ``weight_hr_l{k}[_reverse]``
    of shape ``[P, H]`` (after the biases and peepholes); ``h`` states are ``[L*D,B,P]``,
    ``c`` states ``[L*D,B,H]``, outputs ``D*P`` wide, ``weight_hh`` ``[4*H, P]``.
    """ + _DOC_ARGS

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, dtype=np.float32,
                 backend=None, seed=None, peepholes=False, layer_norm=False, zoneout=0.0):
        self._setup(lstm_cell_name(peepholes), input_size, hidden_size, num_layers=num_layers,
                    bias=bias, batch_first=batch_first, dropout=dropout,
                    bidirectional=bidirectional, dtype=dtype, backend=backend, seed=seed,
                    proj_size=proj_size, layer_norm=layer_norm, zoneout=zoneout)

    def forward(self, x, hx=None, lengths=None):
        h0, c0 = split_pair("hx", hx)
        if (h0 is None) != (c0 is None):
            raise TypeError("hx: expected both h0 and c0, or hx=None")
        out, h_n, c_n = self._run(x, h0, c0, lengths)
        return out, (h_n, c_n)

    def backward(self, grad_output, grad_hx=None):
        """BPTT; returns ``(grad_x, (grad_h0, grad_c0))`` and accumulates gradients."""
        gh, gc = split_pair("grad_hx", grad_hx)
        dx, dh0, dc0 = self._run_backward(grad_output, gh, gc)
        return dx, (dh0, dc0)
