"""Weights between fastrnn's (PyTorch's) layout and ONNX's ``LSTM``/``GRU``/``RNN`` inputs.

fastrnn stacks gate blocks in PyTorch's order (LSTM ``i f g o``, GRU ``r z n``); ONNX in its
own (LSTM ``i o f c``, GRU ``z r h``). ONNX's ``W [D, G*H, I]``, ``R [D, G*H, H]``,
``B [D, 2*G*H]`` (``W``'s bias, then ``R``'s) hold one block per direction, as does the
LSTM's ``P [D, 3*H]`` (peephole weights, blocks ``i o f``; fastrnn's rows ``i f o``).
"""

import numpy as np

# fastrnn gate block k is ONNX gate block ONNX_BLOCK[family][k]
ONNX_BLOCK = {"lstm": (0, 2, 3, 1), "gru": (1, 0, 2), "rnn": (0,)}
OP_TYPE = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def _reorder(a, H, order):
    """Gate blocks of ``a`` (blocks of ``H`` along axis 0) taken in ``order``."""
    return np.concatenate([a[k * H:(k + 1) * H] for k in order], axis=0)


def _inverse(order):
    inv = [0] * len(order)
    for k, j in enumerate(order):
        inv[j] = k
    return tuple(inv)


def from_onnx(family, H, W, R, B=None):
    """``(w_ih, w_hh, b_ih, b_hh)`` in fastrnn's layout from one direction's ``W [G*H, I]``,
    ``R [G*H, H]`` and ``B [2*G*H]`` (or None: no bias)."""
    order = ONNX_BLOCK[family]
    w_ih = np.ascontiguousarray(_reorder(W, H, order))
    w_hh = np.ascontiguousarray(_reorder(R, H, order))
    if B is None:
        return w_ih, w_hh, None, None
    GH = W.shape[0]
    return (w_ih, w_hh, np.ascontiguousarray(_reorder(B[:GH], H, order)),
            np.ascontiguousarray(_reorder(B[GH:], H, order)))


def to_onnx(family, H, w_ih, w_hh, b_ih=None, b_hh=None):
    """``(W, R, B)`` of one direction (``B`` None without bias): the inverse of
    :func:`from_onnx`."""
    order = _inverse(ONNX_BLOCK[family])
    W, R = _reorder(w_ih, H, order), _reorder(w_hh, H, order)
    if b_ih is None:
        return W, R, None
    return W, R, np.concatenate([_reorder(b_ih, H, order), _reorder(b_hh, H, order)])


# fastrnn peephole row k is ONNX block PEEPHOLE_BLOCK[k]
PEEPHOLE_BLOCK = (0, 2, 1)


def peepholes_from_onnx(H, P):
    """fastrnn's ``peepholes [3,H]`` (rows i, f, o) from one direction's ``P [3*H]``."""
    return np.ascontiguousarray(np.asarray(P).reshape(3, H)[list(PEEPHOLE_BLOCK)])


def peepholes_to_onnx(p):
    """One direction's ``P [3*H]``: the inverse of :func:`peepholes_from_onnx`."""
    return np.ascontiguousarray(p[list(_inverse(PEEPHOLE_BLOCK))]).reshape(-1)
