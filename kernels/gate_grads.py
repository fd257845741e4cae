"""The part of backward every backend shares: after the time loop has produced the gates'
pre-activation gradients of every step, the input and weight gradients are single GEMMs
over all ``T*B`` rows, and the bias gradients single reductions.

Shapes (docs/architecture.md legend): ``dgx``, ``dgh [T,B,G*H]`` (input-side and
recurrent-side gate gradients; the same array except for the GRU, whose ``n`` gate sees
``r * (W_hn h + b_hn)``),
``x [T,B,I]``, ``h_prev [T,B,H]`` (the state each step started from); for
``gru_reset_before``, ``rh [T,B,H]`` (``r * h``, what ``W_hn`` multiplied) and ``dgh``'s
``n`` block zero, ``dgx``'s holding that gate's gradient.
"""


def input_and_weight_grads(xp, matmul, dgx, dgh, x, h_prev, w_ih, has_bias, gru,
                           empty=None, rh=None):
    """Return ``dx [T,B,I], dw_ih [G*H,I], dw_hh [G*H,H], db_ih, db_hh`` (None without bias).

    ``matmul(a, b, out)`` is the backend's GEMM (``out[:] = a @ b``, returns ``out``);
    ``empty(shape, dtype)`` its allocator (default ``xp.empty``).
    """
    empty = empty or xp.empty
    T, B, I = x.shape
    GH, H = dgh.shape[2], h_prev.shape[2]
    gx2 = dgx.reshape(T * B, GH)
    gh2 = dgh.reshape(T * B, GH)
    dx = empty((T, B, I), x.dtype)
    matmul(gx2, w_ih, dx.reshape(T * B, I))
    dw_ih = matmul(gx2.T, x.reshape(T * B, I), empty((GH, I), x.dtype))
    dw_hh = matmul(gh2.T, h_prev.reshape(T * B, H), empty((GH, H), x.dtype))
    if rh is not None:  # W_hn multiplied r * h
        matmul(xp.ascontiguousarray(gx2[:, 2 * H:]).T, rh.reshape(T * B, H), dw_hh[2 * H:])
    db_ih = db_hh = None
    if has_bias:
        db_ih = gx2.sum(axis=0)
        db_hh = db_ih.copy()  # the gates' pre-activations take both biases alike ...
        if gru:  # ... except the GRU's n, where b_hn sits inside r * (.)
            db_hh[2 * H:] = gh2[:, 2 * H:].sum(axis=0)
    return dx, dw_ih, dw_hh, db_ih, db_hh


def peephole_grads(xp, dg, c0, c_all, reverse):
    """The gradients of ``lstm_peephole``'s peephole weights, ``[3,H]`` (rows i, f, o):
    sums over steps and rows of the input and forget gates' gradients times the cell state
    each step started from, and of the output gate's times the one it ended with.

    ``dg [T,B,4*H]``: the gates' pre-activation gradients (zero at padding steps);
    ``c0 [B,H]``; ``c_all [T,B,H]``: the cell state after each step (at a padding step, the
    state carried through it); ``reverse``: the direction walked time backwards."""
    T, B, GH = dg.shape
    H = GH // 4
    if T == 0:
        return xp.zeros((3, H), dg.dtype)
    first = c0[None]
    c_prev = (xp.concatenate([c_all[1:], first]) if reverse
              else xp.concatenate([first, c_all[:-1]]))
    return xp.stack([(dg[:, :, 0:H] * c_prev).sum(axis=(0, 1)),
                     (dg[:, :, H:2 * H] * c_prev).sum(axis=(0, 1)),
                     (dg[:, :, 3 * H:] * c_all).sum(axis=(0, 1))])
