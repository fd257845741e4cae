"""One spec per recurrent cell: name, gates, states, gate order and equations.

Shapes follow the legend of DESIGN.md: ``T`` steps, ``B`` batch, ``I`` input features,
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

``gru`` (gate order r, z, n; the reset gate multiplies the recurrent product *after* it
is computed, as in PyTorch and cuDNN)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh   (W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h
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
        The matching ``torch.nn`` mode name, for parity tests and weight exchange.
    id : int
        The cell's number in compiled code (the CPU loops take it as a run-time argument,
        the CUDA kernels as a template parameter): every backend reads it from here.
    """

    name: str
    gates: int
    gate_order: tuple
    has_cell_state: bool
    activation: str
    torch_mode: str
    id: int


CELLS = {
    "rnn_tanh": CellSpec("rnn_tanh", 1, ("h",), False, "tanh", "RNN_TANH", 0),
    "rnn_relu": CellSpec("rnn_relu", 1, ("h",), False, "relu", "RNN_RELU", 1),
    "rnn_sigmoid": CellSpec("rnn_sigmoid", 1, ("h",), False, "sigmoid", "", 2),
    "lstm": CellSpec("lstm", 4, ("i", "f", "g", "o"), True, "", "LSTM", 3),
    "gru": CellSpec("gru", 3, ("r", "z", "n"), False, "", "GRU", 4),
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
