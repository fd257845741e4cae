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
from typing import Any, NamedTuple

import numpy as np

from .cells import get_cell
from .contract import LN_EPS, Sequence, State, Weights
from .quantize import dequantized, is_quantized


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


class Saved(NamedTuple):
    """What :func:`backward` reads of a training :func:`forward` (``[T,B,*]`` per step):
    the input, the weights, the valid-step mask, the gate activations ``acts``, the state
    each step started from ``h_prev``, and per cell ``c_prev``, ``c_out`` (the LSTMs' cell
    state before and after each step), ``hn`` (the GRU's ``W_hn h + b_hn``, or ``r * h``
    reset before), ``m`` (a projected LSTM's ``o * tanh(c')``); None where a cell has
    none."""

    x: Any
    weights: Weights
    mask: Any
    reverse: bool
    acts: Any
    h_prev: Any
    c_prev: Any
    c_out: Any
    hn: Any
    m: Any
    norms: Any  # a layer-normalised cell's Norms, else None
    zoneout: Any  # [T,B,S] zoneout factors, or None


class Norms(NamedTuple):
    """What backward needs of a layer-normalised cell's normalisations (``x_hat`` the
    normalised input of each, ``rstd`` its ``1 / sqrt(var + eps)``): of ``W_ih x`` (all
    steps at once), of ``W_hh h`` and of the LSTMs' ``c'`` (None for the others)."""

    x_hat: Any
    x_rstd: Any
    h_hat: Any
    h_rstd: Any
    c_hat: Any
    c_rstd: Any


def layer_norm(v, gain, bias=None):
    """``LN(v) = (v - mean) / sqrt(var + eps) * gain (+ bias)`` over the last axis (biased
    variance, torch.nn.LayerNorm's definition): the result, ``x_hat`` and ``rstd``."""
    mean = v.mean(axis=-1, keepdims=True)  # (array methods only: CuPy arrays work too)
    rstd = (((v - mean) ** 2).mean(axis=-1, keepdims=True) + LN_EPS) ** -0.5
    x_hat = (v - mean) * rstd
    out = x_hat * gain
    return (out if bias is None else out + bias), x_hat, rstd


def layer_norm_grad(d_out, x_hat, rstd, gain):
    """The gradient reaching ``v`` of :func:`layer_norm` from the one reaching its result."""
    dx = d_out * gain
    return rstd * (dx - dx.mean(axis=-1, keepdims=True)
                   - x_hat * (dx * x_hat).mean(axis=-1, keepdims=True))


def _lstm_step(spec, xg, hg, h, c, w):
    """One LSTM step: ``h'``, ``c'``, ``acts`` and what else the step keeps."""
    H = c.shape[1]
    p_i, p_f, p_o = w.peepholes if spec.peepholes else (0, 0, 0)
    i = sigmoid(xg[:, 0:H] + hg[:, 0:H] + p_i * c)
    f = sigmoid(xg[:, H:2 * H] + hg[:, H:2 * H] + p_f * c)
    g = np.tanh(xg[:, 2 * H:3 * H] + hg[:, 2 * H:3 * H])
    c_new = f * c + i * g
    o = sigmoid(xg[:, 3 * H:] + hg[:, 3 * H:] + p_o * c_new)
    extra = {}
    c_out = c_new
    if w.ln_c is not None:  # h' = o * tanh(LN(c')); the state carried on is c'
        c_out, extra["c_hat"], extra["c_rstd"] = layer_norm(c_new, w.ln_c, w.ln_c_bias)
    m = o * np.tanh(c_out)
    h_new = m if w.w_hr is None else m @ w.w_hr.T
    return h_new, c_new, np.concatenate([i, f, g, o], axis=1), dict(m=m, **extra)


def _gru_step(spec, xg, hg, h, c, w):
    """One GRU step (reset gate after or before the recurrent product)."""
    H = h.shape[1]
    r = sigmoid(xg[:, 0:H] + hg[:, 0:H])
    z = sigmoid(xg[:, H:2 * H] + hg[:, H:2 * H])
    if spec.reset_before:
        hn = r * h
        hrn = hn @ w.w_hh[2 * H:].T
        if w.b_hh is not None:
            hrn = hrn + w.b_hh[2 * H:]
        n = np.tanh(xg[:, 2 * H:] + hrn)
    else:
        hn = hg[:, 2 * H:]
        n = np.tanh(xg[:, 2 * H:] + r * hn)
    h_new = (1 - z) * n + z * h
    return h_new, None, np.concatenate([r, z, n], axis=1), dict(hn=hn)


def _rnn_step(spec, xg, hg, h, c, w):
    """One vanilla RNN step."""
    h_new = _activate(spec.activation, xg + hg)
    return h_new, None, h_new, {}


_STEPS = {"lstm": _lstm_step, "gru": _gru_step, "rnn": _rnn_step}


@_quiet
def forward(cell, x, state, weights, seq=Sequence(), training=True, zoneout=None):
    """Run one layer in one direction over the whole sequence (the contract of
    :mod:`.contract`).

    ``state``: ``State(h0 [B,S], c0 [B,H] or None)``; ``weights``: :class:`Weights`
    (``peepholes`` for ``lstm_peephole``, ``w_hr`` for a projected LSTM, the LayerNorm
    gains of a layer-normalised cell); ``seq``: ``Sequence(lengths, reverse)``;
    ``zoneout [T,B,S]``: each step's zoneout factors, or None. Returns ``y [T,B,S]``,
    ``State(h_n, c_n)`` and :class:`Saved` (None unless ``training``). Quantized weights
    (:mod:`.quantize`, inference only) run as the float32 weights they stand for.
    """
    spec = get_cell(cell)
    w = weights
    if is_quantized(w):
        if training:
            raise ValueError("weights: quantized weights run inference only (training=False)")
        w = dequantized(w)
    T, B, _ = x.shape
    H = w.w_hh.shape[0] // spec.gates
    S = w.w_hh.shape[1]  # the state's size: H, or P with a projection
    mask = _valid_mask(seq.lengths, T, B)
    step = _STEPS[spec.family]

    def per_step(width, wanted=True):
        return np.empty((T, B, width), dtype=x.dtype) if wanted else None

    # Input projection for all steps at once; the recurrent part stays in the loop.
    xg = x @ w.w_ih.T
    norms = None
    if w.ln_ih is not None:
        if spec.reset_before:
            raise ValueError(f"layer_norm: not defined for {cell!r} (the reset gate acts "
                             "inside the recurrent product); use the GRU with reset_after")
        xg, x_hat, x_rstd = layer_norm(xg, w.ln_ih)
        lstm = spec.has_cell_state
        norms = Norms(x_hat, x_rstd, per_step(spec.gates * H), per_step(1),
                      per_step(H, lstm), per_step(1, lstm))
    if w.b_ih is not None:
        xg = xg + w.b_ih
    y = np.zeros((T, B, S), dtype=x.dtype)
    kept = Saved(x, w, mask, seq.reverse, per_step(spec.gates * H), per_step(S),
                 per_step(H, spec.has_cell_state), per_step(H, spec.has_cell_state),
                 per_step(H, spec.family == "gru"), per_step(H, w.w_hr is not None),
                 norms, zoneout)
    h, c = state
    for t in _time_order(T, seq.reverse):
        hg = h @ w.w_hh.T
        if norms is not None:
            hg, norms.h_hat[t], norms.h_rstd[t] = layer_norm(hg, w.ln_hh)
        if w.b_hh is not None:
            hg = hg + w.b_hh
        h_new, c_new, kept.acts[t], extra = step(spec, xg[t], hg, h, c, w)
        if zoneout is not None:  # h_t = m h_{t-1} + (1 - m) h~_t
            h_new = zoneout[t] * h + (1 - zoneout[t]) * h_new
        if norms is not None and "c_hat" in extra:
            norms.c_hat[t], norms.c_rstd[t] = extra.pop("c_hat"), extra.pop("c_rstd")
        kept.h_prev[t] = h
        for name, a in extra.items():
            if getattr(kept, name) is not None:
                getattr(kept, name)[t] = a
        if spec.has_cell_state:
            kept.c_prev[t] = c
        if mask is not None:
            # Finished (or not yet started, in reverse) sequences keep their state.
            h_new = np.where(mask[t], h_new, h)
            if spec.has_cell_state:
                c_new = np.where(mask[t], c_new, c)
            y[t] = np.where(mask[t], h_new, 0)
        else:
            y[t] = h_new
        h, c = h_new, c_new
        if spec.has_cell_state:
            kept.c_out[t] = c
    return y, State(h, c), kept if training else None


def _lstm_grads(spec, saved, t, dh_t, dc, scratch):
    """One LSTM step backwards: the gate gradients on the input and the recurrent side,
    the part of ``dh_prev`` not through ``w_hh`` and ``dc_prev``; ``scratch["ln_c"][t]``
    receives the gradient reaching ``LN(c')`` of a layer-normalised cell."""
    a, w = saved.acts[t], saved.weights
    H = a.shape[1] // 4
    p_i, p_f, p_o = w.peepholes if spec.peepholes else (0, 0, 0)
    dm = dh_t if w.w_hr is None else dh_t @ w.w_hr  # the gradient reaching o * tanh(c')
    i, f, g, o = a[:, 0:H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
    norms = saved.norms
    if w.ln_c is None:
        tc = np.tanh(saved.c_out[t])
    else:  # tanh(LN(c'))
        tc = np.tanh(norms.c_hat[t] * w.ln_c + w.ln_c_bias)
    do = dm * tc * o * (1 - o)
    d_tc = dm * o * (1 - tc * tc)  # the gradient reaching tanh's argument
    if w.ln_c is not None:
        scratch["ln_c"][t] = d_tc  # (for the gain's and bias's gradients)
        d_tc = layer_norm_grad(d_tc, norms.c_hat[t], norms.c_rstd[t], w.ln_c)
    dc_t = dc + d_tc + do * p_o
    di = dc_t * g * i * (1 - i)
    df = dc_t * saved.c_prev[t] * f * (1 - f)
    gates = np.concatenate([di, df, dc_t * i * (1 - g * g), do], axis=1)
    return gates, gates, 0, dc_t * f + di * p_i + df * p_f


def _gru_grads(spec, saved, t, dh_t, dc, scratch):
    """One GRU step backwards (see :func:`_lstm_grads`)."""
    a = saved.acts[t]
    H = a.shape[1] // 3
    r, z, n = a[:, 0:H], a[:, H:2 * H], a[:, 2 * H:]
    h_prev = saved.h_prev[t]
    dn = dh_t * (1 - z) * (1 - n * n)
    dz = dh_t * (h_prev - n) * z * (1 - z)
    if spec.reset_before:
        drh = dn @ saved.weights.w_hh[2 * H:]  # the gradient reaching r * h
        dr = drh * h_prev * r * (1 - r)
        gates = np.concatenate([dr, dz, dn], axis=1)
        return gates, gates, dh_t * z + drh * r, None
    dr = dn * saved.hn[t] * r * (1 - r)
    return (np.concatenate([dr, dz, dn], axis=1), np.concatenate([dr, dz, dn * r], axis=1),
            dh_t * z, None)


def _rnn_grads(spec, saved, t, dh_t, dc, scratch):
    """One vanilla RNN step backwards (see :func:`_lstm_grads`)."""
    gates = dh_t * _activation_grad(spec.activation, saved.acts[t])
    return gates, gates, 0, None


_GRADS = {"lstm": _lstm_grads, "gru": _gru_grads, "rnn": _rnn_grads}


@_quiet
def backward(cell, saved, dy, dstate_n):
    """Backpropagation through time for one :func:`forward` call (the contract of
    :mod:`.contract`).

    ``saved``: what :func:`forward` returned with ``training=True``; ``dy [T,B,S]``;
    ``dstate_n``: ``State(dh_n [B,S], dc_n [B,H])``, None members meaning zero. Returns
    ``dx [T,B,I]``, ``State(dh0, dc0)`` and the gradients as :class:`Weights`.
    """
    spec = get_cell(cell)
    x, w, mask, norms, zoneout = saved.x, saved.weights, saved.mask, saved.norms, \
        saved.zoneout
    T, B, _ = x.shape
    GH, S = w.w_hh.shape
    H = GH // spec.gates
    dh = np.zeros((B, S), x.dtype) if dstate_n.h is None else dstate_n.h
    dhs = np.zeros((T, B, S), x.dtype) if w.w_hr is not None else None  # dh' of each step
    dc = None
    if spec.has_cell_state:
        dc = np.zeros((B, H), x.dtype) if dstate_n.c is None else dstate_n.c
    dgx = np.zeros((T, B, GH), dtype=x.dtype)
    dgh = np.zeros((T, B, GH), dtype=x.dtype)
    dgh_raw = dgh if norms is None else np.zeros((T, B, GH), dtype=x.dtype)  # before LN
    scratch = {"ln_c": np.zeros((T, B, H), x.dtype) if w.ln_c is not None else None}
    grads = _GRADS[spec.family]

    # Walk the steps in the opposite order to the forward pass.
    for t in _time_order(T, not saved.reverse):
        m = None if mask is None else mask[t]
        dh_t = dh + (dy[t] if m is None else np.where(m, dy[t], 0))
        d_new = dh_t if zoneout is None else dh_t * (1 - zoneout[t])  # reaching h~_t
        if dhs is not None:
            dhs[t] = d_new if m is None else np.where(m, d_new, 0)
        gates, gates_h, direct, dc_prev = grads(spec, saved, t, d_new, dc, scratch)
        if m is not None:
            gates, gates_h = np.where(m, gates, 0), np.where(m, gates_h, 0)
            if scratch["ln_c"] is not None:
                scratch["ln_c"][t] = np.where(m, scratch["ln_c"][t], 0)
        dgx[t], dgh[t] = gates, gates_h
        if norms is not None:
            dgh_raw[t] = layer_norm_grad(gates_h, norms.h_hat[t], norms.h_rstd[t], w.ln_hh)
        if spec.reset_before:  # n's product saw r * h: its part is in direct
            dh_prev = dgh_raw[t][:, :2 * H] @ w.w_hh[:2 * H] + direct
        else:
            dh_prev = dgh_raw[t] @ w.w_hh + direct
        if zoneout is not None:
            dh_prev = dh_prev + zoneout[t] * dh_t
        if m is not None:
            # A step past the sequence's end passed the state through unchanged.
            dh_prev = np.where(m, dh_prev, dh_t)
            if spec.has_cell_state:
                dc_prev = np.where(m, dc_prev, dc)
        dh, dc = dh_prev, dc_prev
    dgx_raw = dgx if norms is None else layer_norm_grad(dgx, norms.x_hat, norms.x_rstd,
                                                        w.ln_ih)
    return (dgx_raw @ w.w_ih, State(dh, dc),
            _weight_grads(spec, saved, dgx, dgh, dgx_raw, dgh_raw, dhs, scratch))


def _weight_grads(spec, saved, dgx, dgh, dgx_raw, dgh_raw, dhs, scratch):
    """Every weight's gradient from the gate gradients of all steps (``dgx``, ``dgh``:
    of the pre-activations; ``*_raw``: of the products, before a LayerNorm)."""
    x, w, h_prev, norms = saved.x, saved.weights, saved.h_prev, saved.norms
    T, B, I = x.shape
    GH, S = w.w_hh.shape
    H = GH // spec.gates
    dw_ih = dgx_raw.reshape(T * B, GH).T @ x.reshape(T * B, I)  # (-1 fails at T*B=0)
    if spec.reset_before:  # the n gate's recurrent weights multiplied r * h
        w_in = [h_prev, h_prev, saved.hn]
        dw_hh = np.concatenate([
            dgh[:, :, g * H:(g + 1) * H].reshape(T * B, H).T @ w_in[g].reshape(T * B, H)
            for g in range(3)])
    else:
        dw_hh = dgh_raw.reshape(T * B, GH).T @ h_prev.reshape(T * B, S)
    bias = w.b_ih is not None
    dpeep = None
    if spec.peepholes:  # (padding steps have zero gate gradients)
        dpeep = np.stack([(dgx[:, :, 0:H] * saved.c_prev).sum(axis=(0, 1)),
                          (dgx[:, :, H:2 * H] * saved.c_prev).sum(axis=(0, 1)),
                          (dgx[:, :, 3 * H:] * saved.c_out).sum(axis=(0, 1))])
    grads = Weights(dw_ih, dw_hh, dgx.sum(axis=(0, 1)) if bias else None,
                    dgh.sum(axis=(0, 1)) if bias else None, dpeep,
                    None if w.w_hr is None else
                    dhs.reshape(T * B, S).T @ saved.m.reshape(T * B, H))
    if norms is None:
        return grads
    grads = grads._replace(ln_ih=(dgx * norms.x_hat).sum(axis=(0, 1)),
                           ln_hh=(dgh * norms.h_hat).sum(axis=(0, 1)))
    if w.ln_c is not None:  # (padding steps: zero gradients, so nothing added)
        grads = grads._replace(ln_c=(scratch["ln_c"] * norms.c_hat).sum(axis=(0, 1)),
                               ln_c_bias=scratch["ln_c"].sum(axis=(0, 1)))
    return grads
