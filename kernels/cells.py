"""One spec per recurrent cell: name, gates, states, gate order and equations.

Shapes follow the legend of docs/architecture.md: ``T`` steps, ``B`` batch, ``I`` input features,
``H`` hidden units, ``G`` gates. Weights are stored exactly as PyTorch and cuDNN store them:
``w_ih [G*H, I]``, ``w_hh [G*H, H]``, ``b_ih [G*H]``, ``b_hh [G*H]``, gate blocks stacked
along the first axis in the order given by ``gate_order``.

Equations (``x`` the input of the step, ``h`` the previous hidden state, ``c`` the previous
cell state, ``*`` elementwise, ``W_i? / W_h?`` the gate's block of ``w_ih / w_hh``):

``rnn_tanh``, ``rnn_relu``, ``rnn_sigmoid`` (one gate)::

    h' = act(W_ih x + b_ih + W_hh h + b_hh)          act = tanh | relu | sigmoid

``lstm`` (gate order i, f, g, o)::

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)
    g = tanh   (W_ig x + b_ig + W_hg h + b_hg)
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')

``lstm_peephole`` (the same gates and weights, and peephole weights ``p_i``, ``p_f``,
``p_o``: the rows of ``peepholes [3,H]``, through which the gates also see the cell state;
ONNX's ``P`` input, TensorFlow's ``use_peepholes``)::

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi + p_i * c)
    f = sigmoid(W_if x + b_if + W_hf h + b_hf + p_f * c)
    g = tanh   (W_ig x + b_ig + W_hg h + b_hg)
    c' = f * c + i * g
    o = sigmoid(W_io x + b_io + W_ho h + b_ho + p_o * c')
    h' = o * tanh(c')

``gru`` (gate order r, z, n; the reset gate multiplies the recurrent product *after* it
is computed, as in PyTorch and cuDNN)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh   (W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

``gru_reset_before`` (the same gates and weights; the reset gate multiplies the state
*before* the recurrent product: Cho et al.'s GRU, Keras ``reset_after=False``, ONNX
``linear_before_reset=0``)::

    n = tanh   (W_in x + b_in + W_hn (r * h) + b_hn)

Backward (``dh`` the gradient reaching ``h'``, ``dc`` the one reaching ``c'``; ``d*`` of a
gate is the gradient of its pre-activation; ``^T`` a transpose)::

    rnn:   da = dh * act'(a)                 dh_prev = W_hh^T da
    lstm:  dc_t = dc + dh * o * (1 - tanh(c')^2)
           di = dc_t * g * i(1-i)   df = dc_t * c * f(1-f)   dg = dc_t * i * (1-g^2)
           do = dh * tanh(c') * o(1-o)
           dc_prev = dc_t * f       dh_prev = W_hh^T [di df dg do]
    lstm_peephole:   do = dh * tanh(c') * o(1-o)
           dc_t = dc + dh * o * (1 - tanh(c')^2) + do * p_o
           di, df, dg as for lstm (with this dc_t)
           dc_prev = dc_t * f + di * p_i + df * p_f      dh_prev as for lstm
           dp_i = sum di * c     dp_f = sum df * c     dp_o = sum do * c'
    gru:   dn = dh * (1-z) * (1-n^2)   dz = dh * (h - n) * z(1-z)
           dr = dn * (W_hn h + b_hn) * r(1-r)
           dh_prev = W_h[rz]^T [dr dz] + W_hn^T (r * dn) + z * dh
           dW_hn = sum (r * dn) h^T     db_hn = sum r * dn
    gru_reset_before:   dn, dz as for gru;   d(rh) = W_hn^T dn
           dr = d(rh) * h * r(1-r)
           dh_prev = W_h[rz]^T [dr dz] + r * d(rh) + z * dh
           dW_hn = sum dn (r * h)^T     db_hn = sum dn

and for every cell ``dx = W_ih^T d[gates]``, ``dW_ih = sum d[gates] x^T``, ``db_ih = sum
d[gates]``, ``dW_h? = sum d? h^T`` and ``db_h? = sum d?`` where not given above.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class CellSpec:
    """Static description of one recurrent cell.

    Attributes
    ----------
    name : str
        The cell's name in the kernel contract (``"lstm"``, ``"gru"``, ``"rnn_tanh"``, ...).
    gates : int
        ``G``: how many ``H``-sized blocks ``w_ih`` and ``w_hh`` stack.
    gate_order : tuple of str
        The names of those blocks, in storage order.
    has_cell_state : bool
        True for the LSTM, the only cell that carries ``c`` beside ``h``.
    activation : str
        The vanilla RNN's activation (``"tanh"``, ``"relu"``, ``"sigmoid"``); ``""`` otherwise.
    torch_mode : str
        The matching ``torch.nn`` mode name, for parity tests and weight exchange; ``""``
        where PyTorch has no such cell.
    id : int
        The cell's number in compiled code (the CPU loops take it as a run-time argument,
        the CUDA kernels as a template parameter): every backend reads it from here.
    family : str
        ``"rnn"``, ``"lstm"`` or ``"gru"``: the layer class that runs the cell.
    reset_before : bool
        The GRU whose reset gate multiplies the state before the recurrent product.
    peepholes : bool
        The LSTM whose gates also see the cell state (weights ``peepholes [3,H]``).
    """

    name: str
    gates: int
    gate_order: tuple
    has_cell_state: bool
    activation: str
    torch_mode: str
    id: int
    family: str
    reset_before: bool = False
    peepholes: bool = False


CELLS = {
    "rnn_tanh": CellSpec("rnn_tanh", 1, ("h",), False, "tanh", "RNN_TANH", 0, "rnn"),
    "rnn_relu": CellSpec("rnn_relu", 1, ("h",), False, "relu", "RNN_RELU", 1, "rnn"),
    "rnn_sigmoid": CellSpec("rnn_sigmoid", 1, ("h",), False, "sigmoid", "", 2, "rnn"),
    "lstm": CellSpec("lstm", 4, ("i", "f", "g", "o"), True, "", "LSTM", 3, "lstm"),
    "gru": CellSpec("gru", 3, ("r", "z", "n"), False, "", "GRU", 4, "gru"),
    "gru_reset_before": CellSpec("gru_reset_before", 3, ("r", "z", "n"), False, "", "", 5,
                                 "gru", reset_before=True),
    "lstm_peephole": CellSpec("lstm_peephole", 4, ("i", "f", "g", "o"), True, "", "", 6,
                              "lstm", peepholes=True),
}
assert sorted(s.id for s in CELLS.values()) == list(range(len(CELLS)))


def get_cell(name):
    """Return the :class:`CellSpec` called ``name``; a clear error for an unknown name."""
    try:
        return CELLS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"cell: expected one of {sorted(CELLS)}, got {name!r}"
        ) from None
