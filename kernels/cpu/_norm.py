"""Layer-normalised cells and zoneout on the CPU: the products by BLAS, the rest compiled.

A LayerNorm needs its product's whole row (every gate of every unit) before any gate, and
zoneout mixes each step's new state with the old one; both sit between a step's recurrent
product and the next step's. A call with either runs here: per step, ``W_hh h`` by the
batch-split loops' packed product (each thread its row block, on weights packed once a
call), then one compiled pass over the rows (the normalisation's statistics, the biases,
the cell, ``LN(c)``), the projection's product when there is one, and one compiled pass
for zoneout, lengths and the output. Backward walks the steps in reverse the same way; the
input projection and the weight gradients are GEMMs over all steps (:mod:`._blas`), as in
the other loops. The equations are the reference's (:mod:`fastrnn.kernels.reference`).
Call inside the backend's thread setting (``single_threaded_blas``, ``pinned``).
"""

from typing import Any, NamedTuple

import numpy as np
from numba import prange

from ..cells import get_cell
from ..contract import LN_EPS, State, Weights
from ._alloc import empty
from ._blas import matmul
from ._gemm import gemm_packed, pack
from ._jit import jit
from ._math import (CELL_IDS, GRU, LSTM_P, has_cell_state, rnn_activation,
                    rnn_activation_grad, sigmoid, tanh)

ONE = np.float32(1)
ZERO = np.float32(0)


@jit(parallel=True)
def _products(v, w_packed, out, chunks, s):
    """``out[:, :N] = v @ W`` for ``W`` packed by :func:`._gemm.pack` (``out`` as wide as
    the panels): each of ``chunks``' row blocks on its own thread."""
    for ci in prange(chunks.size - 1):
        gemm_packed(v, chunks[ci], chunks[ci + 1], w_packed, out, s)


class _Product:
    """``v @ W`` for one weight matrix, packed once, each step into the same buffer."""

    def __init__(self, w, transpose, rows, chunks):
        self.packed = pack(np.ascontiguousarray(w), transpose=transpose)
        P, _, NR = self.packed.shape
        self.out = np.empty((rows, P * NR), w.dtype)
        self.n = w.shape[0] if transpose else w.shape[1]
        self.chunks = chunks

    def __call__(self, v, step):
        _products(v, self.packed, self.out, self.chunks, step)
        return self.out[:, :self.n]


class Params(NamedTuple):
    """The step's parameters as the compiled passes take them (empty arrays where a layer
    has none): ``b_hh [G*H]``, ``peep [3,H]``, ``ln_hh [G*H]``, ``ln_c``, ``ln_c_bias
    [H]``."""

    b_hh: Any
    peep: Any
    ln_hh: Any
    ln_c: Any
    ln_c_bias: Any


class Steps(NamedTuple):
    """What each step keeps for backward, ``[T,B,*]`` (``[1,B,*]`` scratch when a cell has
    none or nothing is saved): ``acts`` the gate activations, ``c_prev``, ``c_out`` the
    LSTMs' cell state before and after, ``h_hat``, ``h_rstd`` the normalisation of ``W_hh
    h``, ``c_hat``, ``c_rstd`` that of ``c'``, ``hn`` the GRU's normalised ``W_hn h +
    b_hn``, ``m`` the LSTMs' ``o * tanh(LN(c'))`` (before a projection)."""

    acts: Any
    c_prev: Any
    c_out: Any
    h_hat: Any
    h_rstd: Any
    c_hat: Any
    c_rstd: Any
    hn: Any
    m: Any


class Kept(NamedTuple):
    """What :func:`backward` needs of a training :func:`forward`."""

    x: Any
    weights: Weights
    lengths: Any
    reverse: bool
    zoneout: Any
    x_hat: Any
    x_rstd: Any
    h_prev: Any
    steps: Steps


@jit()
def _normalize(v, gain, hat, rstd):
    """Each row of ``v [R,N]`` in place to ``(v - mean) / sqrt(var + eps) * gain``;
    ``hat [R,N]``, ``rstd [R]`` receive the normalised row and ``1 / sqrt(var + eps)``."""
    R, N = v.shape
    for r in range(R):
        row, hr = v[r], hat[r]
        mean = 0.0
        for j in range(N):
            mean += row[j]
        mean /= N
        var = 0.0
        for j in range(N):
            d = row[j] - mean
            var += d * d
        rs = 1.0 / np.sqrt(var / N + LN_EPS)
        for j in range(N):
            hr[j] = (row[j] - mean) * rs
        for j in range(N):
            row[j] = hr[j] * gain[j]
        rstd[r] = rs


@jit()
def _normalize_grad(d, hat, rstd, gain, out):
    """``out [R,N]``: the gradient reaching the rows :func:`_normalize` read, from ``d``
    the one reaching its results."""
    R, N = d.shape
    for r in range(R):
        dr, hr, o = d[r], hat[r], out[r]
        s1 = 0.0
        s2 = 0.0
        for j in range(N):
            g = dr[j] * gain[j]
            s1 += g
            s2 += g * hr[j]
        s1 /= N
        s2 /= N
        rs = rstd[r]
        for j in range(N):
            o[j] = rs * (dr[j] * gain[j] - s1 - hr[j] * s2)


@jit()
def _column_sums(d, hat, sums, sums_hat):
    """``sums = d.sum(0)`` and, when ``hat`` has rows, ``sums_hat = (d * hat).sum(0)``
    over the rows of ``d [R,N]`` (one pass, no temporaries)."""
    R, N = d.shape
    with_hat = hat.shape[0] > 0
    for j in range(N):
        sums[j] = 0
        sums_hat[j] = 0
    for r in range(R):
        dr = d[r]
        for j in range(N):
            sums[j] += dr[j]
        if with_hat:
            hr = hat[r]
            for j in range(N):
                sums_hat[j] += dr[j] * hr[j]


@jit()
def _forward_step(cell, t, ts, xg, hg, h, c, lengths, p, s, new):
    """Step ``t`` of every row (``ts``: where the step's saved arrays are): ``xg [B,G*H]``
    the normalised input side with ``b_ih``, ``hg [B,G*H]`` ``W_hh h`` (normalised in
    place), ``h [B,H]`` the state, ``c [B,H]`` the LSTMs' cell state (updated where the
    row has a step); ``new [B,H]`` receives the cell's output ``h~`` (the LSTMs' before a
    projection)."""
    B, GH = hg.shape
    H = new.shape[1]
    ln = p.ln_hh.size > 0
    if ln:
        _normalize(hg, p.ln_hh, s.h_hat[ts], s.h_rstd[ts, :, 0])
    lstm = has_cell_state(cell)
    for b in range(B):
        a, x_, g_, nw = s.acts[ts, b], xg[b], hg[b], new[b]
        bh = p.b_hh
        for j in range(GH):
            g_[j] += bh[j]
        if lstm:
            cb = c[b]
            s.c_prev[ts, b] = cb
            if t >= lengths[b]:
                s.c_out[ts, b] = cb
                continue
            for j in range(GH):  # (one pass per few arrays: LLVM vectorises these)
                a[j] = x_[j] + g_[j]
            ai, af, ag, ao = a[0:H], a[H:2 * H], a[2 * H:3 * H], a[3 * H:4 * H]
            if cell == LSTM_P:
                p0, p1 = p.peep[0], p.peep[1]
                for j in range(H):
                    ai[j] += p0[j] * cb[j]
                for j in range(H):
                    af[j] += p1[j] * cb[j]
            for j in range(H):
                ai[j] = sigmoid(ai[j])
            for j in range(H):
                af[j] = sigmoid(af[j])
            for j in range(H):
                ag[j] = tanh(ag[j])
            for j in range(H):
                cb[j] = af[j] * cb[j] + ai[j] * ag[j]
            if cell == LSTM_P:
                p2 = p.peep[2]
                for j in range(H):
                    ao[j] += p2[j] * cb[j]
            for j in range(H):
                ao[j] = sigmoid(ao[j])
            s.c_out[ts, b] = cb
            if p.ln_c.size > 0:  # h~ = o * tanh(LN(c'))
                nw[:] = cb
                _normalize(new[b:b + 1], p.ln_c, s.c_hat[ts, b:b + 1],
                           s.c_rstd[ts, b:b + 1, 0])
                lb = p.ln_c_bias
                for j in range(H):
                    nw[j] = tanh(nw[j] + lb[j])
            else:
                for j in range(H):
                    nw[j] = tanh(cb[j])
            for j in range(H):
                nw[j] *= ao[j]
            s.m[ts if s.m.shape[0] > 1 else 0, b] = nw
        elif cell == GRU:
            if t >= lengths[b]:
                continue
            hn = s.hn[ts, b]
            for j in range(H):
                a[j] = sigmoid(x_[j] + g_[j])
                a[H + j] = sigmoid(x_[H + j] + g_[H + j])
                hn[j] = g_[2 * H + j]
                n = tanh(x_[2 * H + j] + a[j] * hn[j])
                a[2 * H + j] = n
                nw[j] = n + a[H + j] * (h[b, j] - n)
        else:
            if t >= lengths[b]:
                continue
            for j in range(H):
                a[j] = rnn_activation(cell, x_[j] + g_[j])
                nw[j] = a[j]


@jit()
def _reset_gates(t, ts, xg, hg, h, lengths, p, s):
    """The reset-before GRU's first part of step ``t``: ``r``, ``z`` into the activations
    and ``r * h`` into ``s.hn`` (the second product's input; zero past a row's length)."""
    B, H = h.shape
    for b in range(B):
        rh = s.hn[ts, b]
        if t >= lengths[b]:
            for j in range(H):
                rh[j] = ZERO
            continue
        a, x_, g_, hb = s.acts[ts, b], xg[b], hg[b], h[b]
        for j in range(2 * H):
            a[j] = sigmoid(x_[j] + g_[j] + p.b_hh[j])
        for j in range(H):
            rh[j] = a[j] * hb[j]


@jit()
def _reset_before_n(t, ts, xg, hrn, h, lengths, p, s, new):
    """Its second part: ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)`` from the second
    product ``hrn [B,H]``, and ``new = (1 - z) * n + z * h``."""
    B, H = h.shape
    for b in range(B):
        if t >= lengths[b]:
            continue
        a, x_, g_, hb, nw = s.acts[ts, b], xg[b], hrn[b], h[b], new[b]
        for j in range(H):
            n = tanh(x_[2 * H + j] + g_[j] + p.b_hh[2 * H + j])
            a[2 * H + j] = n
            nw[j] = n + a[H + j] * (hb[j] - n)


@jit()
def _finish_step(t, new, h, zoneout, lengths, y):
    """The state after step ``t``: ``h = m * h + (1 - m) * new`` (``zoneout [T,B,S]`` the
    factors ``m``, or empty for none) where the row has a step, the output ``y[t]`` that
    state (zero past the row's length)."""
    B, S = h.shape
    zone = zoneout.shape[0] > 0
    for b in range(B):
        yb, hb, nb = y[t, b], h[b], new[b]
        if t >= lengths[b]:
            for j in range(S):
                yb[j] = ZERO
            continue
        if zone:
            zb = zoneout[t, b]
            for j in range(S):
                hb[j] = zb[j] * hb[j] + (ONE - zb[j]) * nb[j]
        else:
            for j in range(S):
                hb[j] = nb[j]
        for j in range(S):
            yb[j] = hb[j]


def _zeros(shape, dt):
    """Zeros from the backend's pool of mapped blocks (:mod:`._alloc`)."""
    a = empty(shape, dt)
    a.fill(0)
    return a


def _scratch(shape, wanted, dt):
    """Zeros (a padded row's entries stay zero: the gradient sums multiply them by zero
    gradients), or one step's scratch when not ``wanted``."""
    return _zeros(shape if wanted else (1,) + tuple(shape[1:]), dt)


def _params(w, GH, H, dt):
    def arr(a, shape):
        return np.zeros(shape, dt) if a is None else np.ascontiguousarray(a)
    empty = np.empty(0, dt)
    return Params(arr(w.b_hh, GH), arr(w.peepholes, (3, H)) if w.peepholes is not None
                  else np.empty((0, 0), dt), empty if w.ln_hh is None else w.ln_hh,
                  empty if w.ln_c is None else w.ln_c,
                  empty if w.ln_c_bias is None else w.ln_c_bias)


def forward(cell, x, state, w, seq, training, zoneout, chunks):
    """Kernel contract forward (:mod:`fastrnn.kernels.contract`) of a layer-normalised
    cell or one with zoneout; ``chunks``: the threads' row blocks."""
    spec = get_cell(cell)
    T, B, I = x.shape
    GH, S = w.w_hh.shape
    H = GH // spec.gates
    dt = x.dtype
    lengths = np.full(B, T, np.int64) if seq.lengths is None else np.asarray(seq.lengths,
                                                                          np.int64)
    xg = matmul(np.ascontiguousarray(x).reshape(T * B, I), w.w_ih.T, empty((T * B, GH), dt))
    x_hat = x_rstd = None
    if w.ln_ih is not None:
        x_hat, x_rstd = empty((T * B, GH), dt), np.empty((T * B, 1), dt)
        _normalize(xg, np.ascontiguousarray(w.ln_ih), x_hat, x_rstd[:, 0])
    if w.b_ih is not None:
        xg += w.b_ih
    xg = xg.reshape(T, B, GH)
    lstm, ln = spec.has_cell_state, w.ln_hh is not None
    steps = T if training else 1
    s = Steps(_zeros((steps, B, GH), dt), _scratch((steps, B, H), lstm, dt),
              _scratch((steps, B, H), lstm, dt), _scratch((steps, B, GH), ln, dt),
              _scratch((steps, B, 1), ln, dt), _scratch((steps, B, H), lstm and ln, dt),
              _scratch((steps, B, 1), lstm and ln, dt),
              _scratch((steps, B, H), spec.family == "gru", dt),
              _scratch((steps, B, H), w.w_hr is not None and training, dt))
    p = _params(w, GH, H, dt)
    zone = np.empty((0, B, S), dt) if zoneout is None else np.ascontiguousarray(zoneout, dt)
    h = np.array(state.h, dt)
    c = np.array(state.c, dt) if lstm else np.empty((B, H), dt)
    y = empty((T, B, S), dt)
    h_prev = empty((T if training else 0, B, S), dt)
    new = np.zeros((B, H), dt)
    cell_id = CELL_IDS[spec.name]
    recurrent = _Product(w.w_hh, True, B, chunks)
    projection = None if w.w_hr is None else _Product(w.w_hr, True, B, chunks)
    # (the reset-before GRU: a second product a step, of W_hn with r * h)
    second = _Product(w.w_hh[2 * H:], True, B, chunks) if spec.reset_before else None
    for k in range(T):
        t = T - 1 - k if seq.reverse else k
        ts = t if training else 0
        if training:
            h_prev[t] = h
        if second is not None:
            _reset_gates(t, ts, xg[t], recurrent(h, k), h, lengths, p, s)
            _reset_before_n(t, ts, xg[t], second(s.hn[ts], k), h, lengths, p, s, new)
        else:
            _forward_step(cell_id, t, ts, xg[t], recurrent(h, k), h, c, lengths, p, s, new)
        _finish_step(t, new if projection is None else projection(new, k), h, zone, lengths,
                     y)
    kept = None
    if training:
        kept = Kept(x, w, lengths, bool(seq.reverse), zoneout, x_hat, x_rstd, h_prev, s)
    return y, State(h, c if lstm else None), kept


@jit()
def _backward_step(cell, t, d, dc, hp, lengths, p, s, gx, gh, direct, dlnc):
    """Step ``t`` backwards for every row: ``d [B,H]`` the gradient reaching the cell's
    output (``h~``; the LSTMs' ``o * tanh(LN(c'))``), ``dc [B,H]`` the one reaching ``c'``
    (updated to ``c``'s), ``hp [B,H]`` the state the step started from; ``gx``, ``gh
    [B,G*H]`` receive the gate pre-activations'
    gradients (input and recurrent side), ``direct [B,H]`` the part of ``dh_prev`` not
    through ``w_hh`` and ``dlnc [B,H]`` the gradient reaching ``LN(c')``; zero past a
    row's length."""
    B, GH = gx.shape
    H = d.shape[1]
    for b in range(B):
        db_, gxb, ghb, dirb, dl = d[b], gx[b], gh[b], direct[b], dlnc[b]
        if t >= lengths[b]:
            for j in range(GH):
                gxb[j] = ZERO
                ghb[j] = ZERO
            for j in range(H):
                dirb[j] = ZERO
                dl[j] = ZERO
            continue
        a = s.acts[t, b]
        if has_cell_state(cell):
            dcb, cp = dc[b], s.c_prev[t, b]
            ln_c = p.ln_c.size > 0
            for j in range(H):
                if ln_c:
                    tc = tanh(s.c_hat[t, b, j] * p.ln_c[j] + p.ln_c_bias[j])
                else:
                    tc = tanh(s.c_out[t, b, j])
                o = a[3 * H + j]
                gxb[3 * H + j] = db_[j] * tc * o * (ONE - o)
                dl[j] = db_[j] * o * (ONE - tc * tc)
            if ln_c:  # the gradient reaching c' through LN (dirb: scratch)
                _normalize_grad(dlnc[b:b + 1], s.c_hat[t, b:b + 1], s.c_rstd[t, b:b + 1, 0],
                                p.ln_c, direct[b:b + 1])
            else:
                for j in range(H):
                    dirb[j] = dl[j]
            peep = cell == LSTM_P
            for j in range(H):
                i, f, g = a[j], a[H + j], a[2 * H + j]
                dct = dcb[j] + dirb[j]
                if peep:
                    dct += gxb[3 * H + j] * p.peep[2, j]
                di = dct * g * i * (ONE - i)
                df = dct * cp[j] * f * (ONE - f)
                gxb[j] = di
                gxb[H + j] = df
                gxb[2 * H + j] = dct * i * (ONE - g * g)
                dcb[j] = dct * f
                if peep:
                    dcb[j] += di * p.peep[0, j] + df * p.peep[1, j]
            for j in range(GH):
                ghb[j] = gxb[j]
            for j in range(H):
                dirb[j] = ZERO
        elif cell == GRU:
            hn, hpb = s.hn[t, b], hp[b]
            for j in range(H):
                r, z, n = a[j], a[H + j], a[2 * H + j]
                dn = db_[j] * (ONE - z) * (ONE - n * n)
                dz = db_[j] * (hpb[j] - n) * z * (ONE - z)
                dr = dn * hn[j] * r * (ONE - r)
                gxb[j] = dr
                gxb[H + j] = dz
                gxb[2 * H + j] = dn
                ghb[j] = dr
                ghb[H + j] = dz
                ghb[2 * H + j] = dn * r
                dirb[j] = db_[j] * z
        else:
            for j in range(H):
                da = rnn_activation_grad(cell, db_[j], a[j])
                gxb[j] = da
                ghb[j] = da
                dirb[j] = ZERO


@jit()
def _finish_grad(t, dh, dy, zoneout, lengths, d_new):
    """Where the gradient ``dh [B,S]`` reaching step ``t``'s state goes: ``dh += dy[t]``
    (the row's output gradient, where it has a step), ``d_new`` receives the part that
    reaches the cell's output (``(1 - m) dh``), ``dh`` keeps the part that passes to the
    previous state directly (``m dh``; all of it past the row's length)."""
    B, S = dh.shape
    zone = zoneout.shape[0] > 0
    for b in range(B):
        hb, nb = dh[b], d_new[b]
        if t >= lengths[b]:
            for j in range(S):
                nb[j] = ZERO
            continue
        dyb = dy[t, b]
        for j in range(S):
            hb[j] += dyb[j]
        if zone:
            zb = zoneout[t, b]
            for j in range(S):
                nb[j] = (ONE - zb[j]) * hb[j]
                hb[j] = zb[j] * hb[j]
        else:
            for j in range(S):
                nb[j] = hb[j]
                hb[j] = ZERO


@jit()
def _reset_before_dn(t, d, lengths, s, gx, gh):
    """The reset-before GRU's backward, first part: ``n``'s gradient into both gate
    gradients' ``n`` blocks (every gate zero past a row's length)."""
    B, H = d.shape
    for b in range(B):
        gxb, ghb = gx[b], gh[b]
        if t >= lengths[b]:
            for j in range(3 * H):
                gxb[j] = ZERO
                ghb[j] = ZERO
            continue
        a, db_ = s.acts[t, b], d[b]
        for j in range(H):
            z, n = a[H + j], a[2 * H + j]
            dn = db_[j] * (ONE - z) * (ONE - n * n)
            gxb[2 * H + j] = dn
            ghb[2 * H + j] = dn


@jit()
def _reset_before_grads(t, d, drh, hp, lengths, s, gx, gh, direct):
    """Its second part, from ``drh = dn @ W_hn`` (the gradient reaching ``r * h``): ``r``'s
    and ``z``'s gradients, and ``direct = z * d + drh * r``."""
    B, H = d.shape
    for b in range(B):
        dirb = direct[b]
        if t >= lengths[b]:
            for j in range(H):
                dirb[j] = ZERO
            continue
        a, db_, dr_, hb, gxb, ghb = s.acts[t, b], d[b], drh[b], hp[b], gx[b], gh[b]
        for j in range(H):
            r, z, n = a[j], a[H + j], a[2 * H + j]
            g_r = dr_[j] * hb[j] * r * (ONE - r)
            g_z = db_[j] * (hb[j] - n) * z * (ONE - z)
            gxb[j] = g_r
            gxb[H + j] = g_z
            ghb[j] = g_r
            ghb[H + j] = g_z
            dirb[j] = db_[j] * z + dr_[j] * r


@jit()
def _add_rows(dh, prod, direct, lengths, t):
    """``dh += prod + direct`` for the rows with a step ``t``."""
    B, S = dh.shape
    for b in range(B):
        if t < lengths[b]:
            hb, pb, db_ = dh[b], prod[b], direct[b]
            for j in range(S):
                hb[j] += pb[j] + db_[j]


def backward(cell, saved, dy, dstate_n, chunks):
    """Kernel contract backward (:mod:`fastrnn.kernels.contract`) of :func:`forward`;
    ``chunks``: the threads' row blocks."""
    spec = get_cell(cell)
    x, w, s, lengths = saved.x, saved.weights, saved.steps, saved.lengths
    T, B, I = x.shape
    GH, S = w.w_hh.shape
    H = GH // spec.gates
    dt = x.dtype
    lstm, ln = spec.has_cell_state, w.ln_hh is not None
    dh = np.zeros((B, S), dt) if dstate_n.h is None else np.array(dstate_n.h, dt)
    dc = np.zeros((B, H), dt) if dstate_n.c is None else np.array(dstate_n.c, dt)
    dy = np.ascontiguousarray(dy)
    zone = (np.empty((0, B, S), dt) if saved.zoneout is None
            else np.ascontiguousarray(saved.zoneout, dt))
    p = _params(w, GH, H, dt)
    dgx, dgh = empty((T, B, GH), dt), empty((T, B, GH), dt)
    dgh_raw = empty((T, B, GH), dt) if ln else dgh
    dlnc = _zeros((T, B, H), dt)
    dhs = _zeros((T if w.w_hr is not None else 0, B, S), dt)
    d_new, direct = np.empty((B, S), dt), np.empty((B, H), dt)
    cell_id = CELL_IDS[spec.name]
    rb = spec.reset_before
    recurrent = _Product(w.w_hh[:2 * H] if rb else w.w_hh, False, B, chunks)
    projection = None if w.w_hr is None else _Product(w.w_hr, False, B, chunks)
    second = _Product(w.w_hh[2 * H:], False, B, chunks) if rb else None
    for k in range(T):
        t = k if saved.reverse else T - 1 - k
        _finish_grad(t, dh, dy, zone, lengths, d_new)
        d_cell = d_new
        if projection is not None:
            dhs[t] = d_new
            d_cell = projection(d_new, k)
        if rb:  # dn, then d(r * h) = dn @ W_hn, then the rest; w_hh[:2H] sees [dr dz]
            _reset_before_dn(t, d_cell, lengths, s, dgx[t], dgh[t])
            _reset_before_grads(t, d_cell, second(dgh[t][:, 2 * H:], k), saved.h_prev[t],
                                lengths, s, dgx[t], dgh[t], direct)
            _add_rows(dh, recurrent(dgh[t][:, :2 * H], k), direct, lengths, t)
            continue
        _backward_step(cell_id, t, d_cell, dc, saved.h_prev[t], lengths, p, s, dgx[t],
                       dgh[t], direct, dlnc[t])
        if ln:
            _normalize_grad(dgh[t], s.h_hat[t], s.h_rstd[t, :, 0], w.ln_hh, dgh_raw[t])
        _add_rows(dh, recurrent(dgh_raw[t], k), direct, lengths, t)
    dgx_raw = dgx
    if w.ln_ih is not None:
        dgx_raw = empty((T * B, GH), dt)
        _normalize_grad(dgx.reshape(T * B, GH), saved.x_hat, saved.x_rstd[:, 0],
                        np.ascontiguousarray(w.ln_ih), dgx_raw)
        dgx_raw = dgx_raw.reshape(T, B, GH)
    return (matmul(dgx_raw.reshape(T * B, GH), w.w_ih, empty((T * B, I), dt)).reshape(
                T, B, I), State(dh, dc if lstm else None),
            _weight_grads(spec, saved, dgx, dgh, dgx_raw, dgh_raw, dlnc, dhs))


def _weight_grads(spec, saved, dgx, dgh, dgx_raw, dgh_raw, dlnc, dhs):
    """Every weight's gradient from the gate gradients of all steps."""
    x, w, s = saved.x, saved.weights, saved.steps
    T, B, I = x.shape
    GH, S = w.w_hh.shape
    H = GH // spec.gates
    dt = x.dtype
    rows = T * B

    def gemm_t(a, b):  # a^T b over all steps' rows
        return matmul(a.reshape(rows, a.shape[-1]).T, b.reshape(rows, b.shape[-1]),
                      np.empty((a.shape[-1], b.shape[-1]), dt))
    ln = w.ln_ih is not None
    no_rows = np.empty((0, GH), dt)
    sx, sx_hat, sh, sh_hat = (np.empty(GH, dt) for _ in range(4))
    _column_sums(dgx.reshape(rows, GH), saved.x_hat if ln else no_rows, sx, sx_hat)
    _column_sums(dgh.reshape(rows, GH), s.h_hat.reshape(rows, GH) if ln else no_rows, sh,
                 sh_hat)
    bias = w.b_ih is not None
    dw_hh = gemm_t(dgh_raw, saved.h_prev)
    if spec.reset_before:  # W_hn multiplied r * h
        dw_hh[2 * H:] = gemm_t(np.ascontiguousarray(dgh[:, :, 2 * H:]), s.hn)
    grads = Weights(gemm_t(dgx_raw, np.ascontiguousarray(x)), dw_hh,
                    sx if bias else None, sh if bias else None)
    if spec.peepholes:  # (padding steps have zero gate gradients)
        grads = grads._replace(peepholes=np.stack([
            (dgx[:, :, 0:H] * s.c_prev).sum(axis=(0, 1)),
            (dgx[:, :, H:2 * H] * s.c_prev).sum(axis=(0, 1)),
            (dgx[:, :, 3 * H:] * s.c_out).sum(axis=(0, 1))]))
    if w.w_hr is not None:
        grads = grads._replace(w_hr=gemm_t(dhs, s.m))
    if ln:
        grads = grads._replace(ln_ih=sx_hat, ln_hh=sh_hat)
    if w.ln_c is not None:
        grads = grads._replace(ln_c=(dlnc * s.c_hat).sum(axis=(0, 1)),
                               ln_c_bias=dlnc.sum(axis=(0, 1)))
    return grads
