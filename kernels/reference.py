"""NumPy reference of the kernel contract: the ground truth, and the ``numpy`` backend.

One layer, one direction, every cell of :mod:`.cells`. A plain loop over time with no
tricks: readability over speed. Every other backend is tested against this module, and this
module is tested against finite differences and against PyTorch.

Shapes (docs/architecture.md legend): ``x [T,B,I]``, ``h0, c0 [B,H]``, ``w_ih [G*H,I]``,
``w_hh [G*H,H]``, ``b_ih, b_hh [G*H]`` (or None for ``bias=False``), ``lengths [B]``,
``peepholes [3,H]`` (``lstm_peephole`` only; rows i, f, o). An LSTM with a projection
(``w_hr [P,H]``, PyTorch's ``proj_size``) carries a state ``h`` of ``P`` units: ``h0 [B,P]``,
``w_hh [4*H,P]``, ``y [T,B,P]``; its cell state stays ``[B,H]``.
"""

import functools

import numpy as np

from .cells import get_cell


def _quiet(fn):
    """Run ``fn`` without NumPy's floating-point warnings: inf or NaN inputs give inf or NaN
    results silently, as PyTorch's and the compiled backends' do."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return fn(*args, **kwargs)
    return wrapper


def sigmoid(z):
    """Logistic function without overflow: ``exp`` only ever sees non-positive arguments."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _activate(name, z):
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0)
    return sigmoid(z)


def _activation_grad(name, y):
    """Derivative of the activation written in terms of its output ``y``."""
    if name == "tanh":
        return 1 - y * y
    if name == "relu":
        return (y > 0).astype(y.dtype)
    return y * (1 - y)


def _valid_mask(lengths, T, B):
    """Boolean ``[T,B,1]`` mask of valid steps (``t < lengths[b]``), or None."""
    if lengths is None:
        return None
    steps = np.arange(T).reshape(T, 1, 1)
    return steps < np.asarray(lengths).reshape(1, B, 1)


def _time_order(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


@_quiet
def forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None, reverse=False,
            training=True, peepholes=None, w_hr=None):
    """Run one layer in one direction over the whole sequence.

    Parameters
    ----------
    cell : str
        A name from :data:`.cells.CELLS`.
    x : ndarray [T,B,I]
    h0 : ndarray [B,H]
    c0 : ndarray [B,H] or None
        Initial cell state (LSTM only; None for the other cells).
    w_ih : ndarray [G*H,I]
    w_hh : ndarray [G*H,H]
    b_ih, b_hh : ndarray [G*H] or None
    lengths : int ndarray [B] or None
        Valid steps of each sequence; outputs past them are zero and the state stops there.
    reverse : bool
        Walk time backwards; with ``lengths``, each sequence starts at its own last step.
    training : bool
        Keep what :func:`backward` needs.
    peepholes : ndarray [3,H] or None
        The peephole weights of ``lstm_peephole`` (rows i, f, o); None for other cells.
    w_hr : ndarray [P,H] or None
        The LSTMs' projection: ``h' = w_hr @ (o * tanh(c'))`` (PyTorch's ``proj_size``).

    Returns
    -------
    y : ndarray [T,B,H] ([T,B,P] with a projection)
    h_n : ndarray [B,H] ([B,P])
    c_n : ndarray [B,H] or None
    saved : dict or None
    """
    spec = get_cell(cell)
    T, B, _ = x.shape
    H = w_hh.shape[0] // spec.gates
    S = w_hh.shape[1]  # the state's size: H, or P with a projection
    mask = _valid_mask(lengths, T, B)

    # Input projection for all steps at once; the recurrent part stays in the loop.
    xg = x @ w_ih.T
    if b_ih is not None:
        xg = xg + b_ih
    y = np.zeros((T, B, S), dtype=x.dtype)
    h_prev = np.empty((T, B, S), dtype=x.dtype)
    m_all = np.empty((T, B, H), dtype=x.dtype) if w_hr is not None else None
    acts = np.empty((T, B, spec.gates * H), dtype=x.dtype)
    c_prev = np.empty((T, B, H), dtype=x.dtype) if spec.has_cell_state else None
    c_out = np.empty((T, B, H), dtype=x.dtype) if spec.has_cell_state else None
    # the GRU's W_hn h + b_hn (reset after) or r * h (reset before), kept for backward
    hn = np.empty((T, B, H), dtype=x.dtype) if spec.family == "gru" else None

    h, c = h0, c0
    for t in _time_order(T, reverse):
        hg = h @ w_hh.T
        if b_hh is not None:
            hg = hg + b_hh
        h_prev[t] = h
        if spec.family == "lstm":
            p_i, p_f, p_o = peepholes if spec.peepholes else (0, 0, 0)
            i = sigmoid(xg[t, :, 0:H] + hg[:, 0:H] + p_i * c)
            f = sigmoid(xg[t, :, H:2 * H] + hg[:, H:2 * H] + p_f * c)
            g = np.tanh(xg[t, :, 2 * H:3 * H] + hg[:, 2 * H:3 * H])
            c_new = f * c + i * g
            o = sigmoid(xg[t, :, 3 * H:] + hg[:, 3 * H:] + p_o * c_new)
            h_new = o * np.tanh(c_new)
            if w_hr is not None:
                m_all[t] = h_new
                h_new = h_new @ w_hr.T
            acts[t] = np.concatenate([i, f, g, o], axis=1)
            c_prev[t] = c
        elif spec.name == "gru":
            r = sigmoid(xg[t, :, 0:H] + hg[:, 0:H])
            z = sigmoid(xg[t, :, H:2 * H] + hg[:, H:2 * H])
            n = np.tanh(xg[t, :, 2 * H:] + r * hg[:, 2 * H:])
            h_new = (1 - z) * n + z * h
            acts[t] = np.concatenate([r, z, n], axis=1)
            hn[t] = hg[:, 2 * H:]
        elif spec.name == "gru_reset_before":
            r = sigmoid(xg[t, :, 0:H] + hg[:, 0:H])
            z = sigmoid(xg[t, :, H:2 * H] + hg[:, H:2 * H])
            rh = r * h
            hrn = rh @ w_hh[2 * H:].T
            if b_hh is not None:
                hrn = hrn + b_hh[2 * H:]
            n = np.tanh(xg[t, :, 2 * H:] + hrn)
            h_new = (1 - z) * n + z * h
            acts[t] = np.concatenate([r, z, n], axis=1)
            hn[t] = rh
        else:
            h_new = _activate(spec.activation, xg[t] + hg)
            acts[t] = h_new
        if mask is not None:
            # Finished (or not yet started, in reverse) sequences keep their state.
            h_new = np.where(mask[t], h_new, h)
            if spec.has_cell_state:
                c_new = np.where(mask[t], c_new, c)
            y[t] = np.where(mask[t], h_new, 0)
        else:
            y[t] = h_new
        h = h_new
        if spec.has_cell_state:
            c = c_new
            c_out[t] = c_new

    saved = None
    if training:
        saved = dict(cell=spec.name, x=x, w_ih=w_ih, w_hh=w_hh, has_bias=b_ih is not None,
                     mask=mask, reverse=reverse, h_prev=h_prev, acts=acts, c_prev=c_prev,
                     c_out=c_out, hn=hn, peepholes=peepholes, w_hr=w_hr, m_all=m_all)
    return y, h, (c if spec.has_cell_state else None), saved


@_quiet
def backward(cell, saved, dy, dh_n, dc_n):
    """Backpropagation through time for one :func:`forward` call.

    Parameters
    ----------
    cell : str
    saved : dict
        What :func:`forward` returned with ``training=True``.
    dy : ndarray [T,B,H] ([T,B,P] with a projection)
        Gradient of the loss with respect to ``y``.
    dh_n, dc_n : ndarray [B,H] ([B,P] for ``dh_n`` with a projection) or None
        Gradients with respect to the final states (None means zero).

    Returns
    -------
    dx [T,B,I], dh0 [B,H], dc0 [B,H] or None, dw_ih [G*H,I], dw_hh [G*H,H],
    db_ih [G*H] or None, db_hh [G*H] or None, and a tuple of the gradients of the extra
    weights forward took, in its order (``dpeepholes [3,H]``, ``dw_hr [P,H]``; empty
    without)
    """
    spec = get_cell(cell)
    x, w_ih, w_hh, mask = saved["x"], saved["w_ih"], saved["w_hh"], saved["mask"]
    acts, h_prev = saved["acts"], saved["h_prev"]
    T, B, _ = x.shape
    H = w_hh.shape[0] // spec.gates
    S = w_hh.shape[1]
    w_hr = saved["w_hr"]
    dh = np.zeros((B, S), x.dtype) if dh_n is None else dh_n
    dhs = np.zeros((T, B, S), x.dtype) if w_hr is not None else None  # dh' of each step
    dc = None
    if spec.has_cell_state:
        dc = np.zeros((B, H), x.dtype) if dc_n is None else dc_n
    dgx = np.zeros((T, B, spec.gates * H), dtype=x.dtype)
    dgh = np.zeros((T, B, spec.gates * H), dtype=x.dtype)
    w_in = h_prev  # what each gate's recurrent weights multiplied: h, except ...
    if spec.reset_before:  # ... the n gate's r * h
        w_in = np.concatenate([np.repeat(h_prev[:, :, None, :], 2, axis=2),
                               saved["hn"][:, :, None, :]], axis=2)

    # Walk the steps in the opposite order to the forward pass.
    for t in _time_order(T, not saved["reverse"]):
        m = None if mask is None else mask[t]
        dh_t = dh + (dy[t] if m is None else np.where(m, dy[t], 0))
        a = acts[t]
        if spec.family == "lstm":
            p_i, p_f, p_o = saved["peepholes"] if spec.peepholes else (0, 0, 0)
            dm = dh_t  # the gradient reaching o * tanh(c')
            if w_hr is not None:
                dhs[t] = dh_t if m is None else np.where(m, dh_t, 0)
                dm = dh_t @ w_hr
            i, f, g, o = a[:, 0:H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            tc = np.tanh(saved["c_out"][t])
            do = dm * tc * o * (1 - o)
            dc_t = dc + dm * o * (1 - tc * tc) + do * p_o
            di = dc_t * g * i * (1 - i)
            df = dc_t * saved["c_prev"][t] * f * (1 - f)
            gates = np.concatenate([di, df, dc_t * i * (1 - g * g), do], axis=1)
            dc_prev = dc_t * f + di * p_i + df * p_f
            gates_h = gates
            direct = 0
        elif spec.name == "gru":
            r, z, n = a[:, 0:H], a[:, H:2 * H], a[:, 2 * H:]
            dn = dh_t * (1 - z) * (1 - n * n)
            dr = dn * saved["hn"][t] * r * (1 - r)
            dz = dh_t * (h_prev[t] - n) * z * (1 - z)
            gates = np.concatenate([dr, dz, dn], axis=1)
            gates_h = np.concatenate([dr, dz, dn * r], axis=1)
            direct = dh_t * z
        elif spec.name == "gru_reset_before":
            r, z, n = a[:, 0:H], a[:, H:2 * H], a[:, 2 * H:]
            dn = dh_t * (1 - z) * (1 - n * n)
            drh = dn @ w_hh[2 * H:]  # the gradient reaching r * h
            dr = drh * h_prev[t] * r * (1 - r)
            dz = dh_t * (h_prev[t] - n) * z * (1 - z)
            gates = gates_h = np.concatenate([dr, dz, dn], axis=1)
            direct = dh_t * z + drh * r
        else:
            gates = dh_t * _activation_grad(spec.activation, a)
            gates_h = gates
            direct = 0
        if m is not None:
            gates, gates_h = np.where(m, gates, 0), np.where(m, gates_h, 0)
        dgx[t], dgh[t] = gates, gates_h
        if spec.reset_before:  # n's product saw r * h: its part is in direct
            dh_prev = gates_h[:, :2 * H] @ w_hh[:2 * H] + direct
        else:
            dh_prev = gates_h @ w_hh + direct
        if m is not None:
            # A step past the sequence's end passed the state through unchanged.
            dh_prev = np.where(m, dh_prev, dh_t)
            if spec.has_cell_state:
                dc_prev = np.where(m, dc_prev, dc)
        dh = dh_prev
        if spec.has_cell_state:
            dc = dc_prev

    G_H = spec.gates * H
    dx = dgx @ w_ih
    dw_ih = dgx.reshape(T * B, G_H).T @ x.reshape(T * B, x.shape[2])  # (-1 fails at T*B=0)
    if spec.reset_before:
        dw_hh = np.concatenate([
            dgh[:, :, g * H:(g + 1) * H].reshape(T * B, H).T @ w_in[:, :, g].reshape(T * B, H)
            for g in range(3)])
    else:
        dw_hh = dgh.reshape(T * B, G_H).T @ h_prev.reshape(T * B, S)
    db_ih = dgx.sum(axis=(0, 1)) if saved["has_bias"] else None
    db_hh = dgh.sum(axis=(0, 1)) if saved["has_bias"] else None
    extra = ()
    if spec.peepholes:  # (padding steps have zero gate gradients)
        c_prev, c_out = saved["c_prev"], saved["c_out"]
        extra += (np.stack([(dgx[:, :, 0:H] * c_prev).sum(axis=(0, 1)),
                            (dgx[:, :, H:2 * H] * c_prev).sum(axis=(0, 1)),
                            (dgx[:, :, 3 * H:] * c_out).sum(axis=(0, 1))]),)
    if w_hr is not None:
        extra += (dhs.reshape(T * B, S).T @ saved["m_all"].reshape(T * B, H),)
    return dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, extra
