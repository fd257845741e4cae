"""Weights between fastrnn's (PyTorch's) layout and ONNX's ``LSTM``/``GRU``/``RNN`` inputs.

fastrnn stacks gate blocks in PyTorch's order (LSTM ``i f g o``, GRU ``r z n``); ONNX in its
own (LSTM ``i o f c``, GRU ``z r h``). ONNX's ``W [D, G*H, I]``, ``R [D, G*H, H]``,
``B [D, 2*G*H]`` (``W``'s bias, then ``R``'s) hold one block per direction, as does the
LSTM's ``P [D, 3*H]`` (peephole weights, blocks ``i o f``; fastrnn's rows ``i f o``).
"""

import numpy as np

from ..kernels.contract import PARAMETER_NAMES, Weights

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


def from_onnx(family, H, W, R, B=None, P=None):
    """fastrnn's :class:`Weights` from one direction's ``W [G*H, I]``, ``R [G*H, H]``, ``B
    [2*G*H]`` (or None: no bias) and an LSTM's ``P [3*H]`` (or None: no peepholes)."""
    order = ONNX_BLOCK[family]
    w = Weights(np.ascontiguousarray(_reorder(W, H, order)),
                np.ascontiguousarray(_reorder(R, H, order)),
                peepholes=None if P is None else peepholes_from_onnx(H, P))
    if B is None:
        return w
    GH = W.shape[0]
    return w._replace(b_ih=np.ascontiguousarray(_reorder(B[:GH], H, order)),
                      b_hh=np.ascontiguousarray(_reorder(B[GH:], H, order)))


def to_onnx(family, H, weights):
    """``(W, R, B, P)`` of one direction (``B`` None without bias, ``P`` without peepholes):
    the inverse of :func:`from_onnx`."""
    order = _inverse(ONNX_BLOCK[family])
    w = weights
    W, R = _reorder(w.w_ih, H, order), _reorder(w.w_hh, H, order)
    P = None if w.peepholes is None else peepholes_to_onnx(w.peepholes)
    if w.b_ih is None:
        return W, R, None, P
    return W, R, np.concatenate([_reorder(w.b_ih, H, order), _reorder(w.b_hh, H, order)]), P


def parameters(weights, suffix):
    """The layer's parameters (``{"weight_ih_l0": ..., ...}``) of one layer's and
    direction's :class:`Weights`, ``suffix`` ``"_l0"``, ``"_l1_reverse"``, ..."""
    return {PARAMETER_NAMES[f] + suffix: a for f, a in weights.present().items()}


# fastrnn peephole row k is ONNX block PEEPHOLE_BLOCK[k]
PEEPHOLE_BLOCK = (0, 2, 1)


def peepholes_from_onnx(H, P):
    """fastrnn's ``peepholes [3,H]`` (rows i, f, o) from one direction's ``P [3*H]``."""
    return np.ascontiguousarray(np.asarray(P).reshape(3, H)[list(PEEPHOLE_BLOCK)])


def peepholes_to_onnx(p):
    """One direction's ``P [3*H]``: the inverse of :func:`peepholes_from_onnx`."""
    return np.ascontiguousarray(p[list(_inverse(PEEPHOLE_BLOCK))]).reshape(-1)
