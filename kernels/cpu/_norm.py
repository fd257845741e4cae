"""Layer-normalised cells and zoneout on the CPU: the products by BLAS, the rest compiled.

A LayerNorm needs its product's whole row (every gate of every unit) before any gate, and
zoneout mixes each step's new state with the old one; both sit between a step's recurrent
product and the next step's. Everything a step does is local to a batch row, so a call with
either splits the batch: each thread walks every step for its row block in one compiled
call (as :mod:`._loops` does; the threads are the GEMM pool's, see
:func:`._blas.on_threads`) - ``W_hh h`` by the packed product on weights packed once a
call (or on the weights as they are, for a call of a few rows), then one pass over its
rows (the normalisation's statistics, the biases, the cell, ``LN(c)``), the projection's
product when there is one, and one pass for zoneout, lengths and the output. Backward walks the steps in reverse the same way; the input
projection and the weight gradients are GEMMs over all steps (:mod:`._blas`), as in the
other loops. The equations are the reference's (:mod:`fastrnn.kernels.reference`).
Call inside the backend's thread setting (``single_threaded_blas``, ``pinned``).
"""

from typing import Any, NamedTuple

import numpy as np
from ..cells import get_cell
from ..contract import LN_EPS, State, Weights
from ._alloc import empty
from ._blas import matmul, on_threads
from ._fpu import flush_denormals, restore
from ._gemm import gemm_packed, matvec, pack, vecmat
from numba import types
from numba.extending import overload

from ._jit import OPTIONS, jit, wide_vectors
from ._math import (CELL_IDS, GRU, LSTM_P, has_cell_state, rnn_activation,
                    rnn_activation_grad, sigmoid, tanh)

ONE = np.float32(1)
ZERO = np.float32(0)


class Product(NamedTuple):
    """One weight matrix of the loops' per-step products: ``packed`` its panels
    (:func:`._gemm.pack`), or None to read ``w`` as it is (a call of a few rows, where
    packing costs more than the products: :func:`._gemm.matvec` forward,
    :func:`._gemm.vecmat` backward); ``w`` the matrix. A layer without the product passes
    None for the whole Product. Which kind is chosen when the loops are compiled, so a
    process compiles only the kinds it runs."""

    packed: Any
    w: Any


def _product(w, transpose, packed):
    """:class:`Product` of ``w`` (None for none) for ``W = w.T`` (``transpose``, forward)
    or ``W = w``, packed or not."""
    if w is None:
        return None
    w = np.ascontiguousarray(w)
    return Product(pack(w, transpose=transpose) if packed else None, w)


def width(prod, n):
    """Columns a buffer for the results of ``prod`` (``n`` of them) needs: whole panels,
    or ``n``; 0 for None."""
    raise NotImplementedError("width runs in compiled code only")


@overload(width, jit_options=OPTIONS)
def _width(prod, n):
    if isinstance(prod, types.NoneType):  # (no such product)
        return lambda prod, n: 0
    if isinstance(prod.types[0], types.NoneType):
        return lambda prod, n: n
    return lambda prod, n: max(prod.packed.shape[0] * prod.packed.shape[2], n)


def forward_product(v, r0, r1, prod, out, k):
    """``out[r, :] = v[r] @ w.T`` for rows ``r0 <= r < r1`` (``k``: the step, for the
    packed product's walk)."""
    raise NotImplementedError("forward_product runs in compiled code only")


@overload(forward_product, jit_options=OPTIONS)
def _forward_product(v, r0, r1, prod, out, k):
    if isinstance(prod.types[0], types.NoneType):
        def as_it_is(v, r0, r1, prod, out, k):
            matvec(v, r0, r1, prod.w, 0, prod.w.shape[0], out)
        return as_it_is

    def panels(v, r0, r1, prod, out, k):
        gemm_packed(v, r0, r1, prod.packed, out, k)
    return panels


def backward_product(v, r0, r1, prod, out, k):
    """``out[r, :] = v[r] @ w`` for rows ``r0 <= r < r1``."""
    raise NotImplementedError("backward_product runs in compiled code only")


@overload(backward_product, jit_options=OPTIONS)
def _backward_product(v, r0, r1, prod, out, k):
    if isinstance(prod.types[0], types.NoneType):
        def as_it_is(v, r0, r1, prod, out, k):
            vecmat(v, r0, r1, prod.w, 0, prod.w.shape[1], out)
        return as_it_is

    def panels(v, r0, r1, prod, out, k):
        gemm_packed(v, r0, r1, prod.packed, out, k)
    return panels


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
def moments(row, H, G, u0, u1):
    """``(mean, sum of squared deviations)`` of ``row``'s entries ``g*H + u0 <= j < g*H +
    u1`` for ``g < G`` (a block of units of every gate), in float64."""
    total = 0.0
    for g in range(G):
        for j in range(g * H + u0, g * H + u1):
            total += row[j]
    mean = total / (G * (u1 - u0))
    m2 = 0.0
    for g in range(G):
        for j in range(g * H + u0, g * H + u1):
            d = row[j] - mean
            m2 += d * d
    return mean, m2


@jit()
def scale_units(row, gain, hat, H, G, u0, u1, mean, rs):
    """``hat = (row - mean) * rs`` and ``row = hat * gain`` on the entries of
    :func:`moments`."""
    for g in range(G):
        j0, j1 = g * H + u0, g * H + u1
        for j in range(j0, j1):
            hat[j] = (row[j] - mean) * rs
        for j in range(j0, j1):
            row[j] = hat[j] * gain[j]


@jit()
def _normalize(v, gain, hat, rstd, r0, r1):
    """Rows ``r0 <= r < r1`` of ``v [R,>=N]`` in place to ``(v - mean) / sqrt(var + eps) *
    gain`` over their first ``N = gain.size`` entries; ``hat [R,N]``, ``rstd [R]`` receive
    the normalised row and ``1 / sqrt(var + eps)``."""
    N = gain.size
    for r in range(r0, r1):
        mean, m2 = moments(v[r], N, 1, 0, N)
        rs = 1.0 / np.sqrt(m2 / N + LN_EPS)
        scale_units(v[r], gain, hat[r], N, 1, 0, N, mean, rs)
        rstd[r] = rs


@jit()
def _normalize_grad(d, hat, rstd, gain, out, r0, r1):
    """``out [R,N]``: the gradient reaching the rows :func:`_normalize` read, from ``d``
    the one reaching its results (rows ``r0 <= r < r1``)."""
    N = gain.size
    for r in range(r0, r1):
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


def _by_rows(fn, args, blocks):
    """``fn(*args, r0, r1)`` for each row block ``[r0, r1)`` of ``blocks``, one a
    thread."""
    on_threads(fn, [args + (blocks[i], blocks[i + 1]) for i in range(blocks.size - 1)])


def _rows(rows, n):
    """``rows`` in ``n`` equal blocks, as boundaries."""
    return np.asarray([rows * k // n for k in range(n + 1)], np.int64)


@jit()
def _sum_rows(d, hat, r0, r1, sums, sums_hat):
    """``sums = d[r0:r1].sum(0)`` and, when ``hat`` has rows, ``sums_hat = (d *
    hat)[r0:r1].sum(0)`` (one pass, no temporaries)."""
    N = d.shape[1]
    for j in range(N):
        sums[j] = 0
        sums_hat[j] = 0
    for r in range(r0, r1):
        dr = d[r]
        for j in range(N):
            sums[j] += dr[j]
        if hat.shape[0] > 0:
            hr = hat[r]
            for j in range(N):
                sums_hat[j] += dr[j] * hr[j]


def _column_sums(d, hat, sums, sums_hat, blocks):
    """:func:`_sum_rows` of all rows of ``d [R,N]``, each row block of ``blocks`` on its
    own thread, the blocks' sums added at the end."""
    part = np.empty((blocks.size - 1, 2, d.shape[1]), sums.dtype)
    on_threads(_sum_rows, [(d, hat, blocks[i], blocks[i + 1], part[i, 0], part[i, 1])
                           for i in range(blocks.size - 1)])
    part[:, 0].sum(axis=0, out=sums)
    part[:, 1].sum(axis=0, out=sums_hat)

@jit()
def _forward_step(cell, t, ts, xg, hg, h, c, lengths, p, s, new, r0, r1):
    """Step ``t`` of rows ``r0 <= b < r1`` (``ts``: where the step's saved arrays are):
    ``xg [B,G*H]`` the normalised input side with ``b_ih``, ``hg [B,>=G*H]`` ``W_hh h``
    (normalised in place), ``h [B,H]`` the state, ``c [B,H]`` the LSTMs' cell state
    (updated where the row has a step); ``new [B,H]`` receives the cell's output ``h~`` (the
    LSTMs' before a projection)."""
    H = new.shape[1]
    if p.ln_hh.size > 0:
        _normalize(hg, p.ln_hh, s.h_hat[ts], s.h_rstd[ts, :, 0], r0, r1)
    for b in range(r0, r1):
        cell_units(cell, t, ts, b, xg, hg, h, c, lengths, p, s, new, 0, H)
        if has_cell_state(cell) and p.ln_c.size > 0 and t < lengths[b]:
            mean, m2 = moments(c[b], H, 1, 0, H)
            rs = 1.0 / np.sqrt(m2 / H + LN_EPS)
            s.c_rstd[ts, b, 0] = rs
            lstm_output(ts, b, c, p, s, new, 0, H, mean, rs)


@jit()
def cell_units(cell, t, ts, b, xg, hg, h, c, lengths, p, s, new, u0, u1):
    """Row ``b``'s cell at step ``t`` for hidden units ``u0 <= j < u1`` (every gate's),
    ``hg`` already normalised (``b_hh`` is added here): the LSTMs' ``c'`` (and, without
    ``LN(c')``, their output), the other cells' output ``h~`` into ``new``. An LSTM with
    ``LN(c')`` finishes in :func:`lstm_output` once the norm's statistics are known."""
    H = new.shape[1]
    G = p.b_hh.size // H
    a, x_, g_, nw = s.acts[ts, b], xg[b], hg[b], new[b]
    bh = p.b_hh
    for g in range(G):
        for j in range(g * H + u0, g * H + u1):
            g_[j] += bh[j]
    if has_cell_state(cell):
        cb, cp, co = c[b], s.c_prev[ts, b], s.c_out[ts, b]
        for j in range(u0, u1):
            cp[j] = cb[j]
        if t >= lengths[b]:
            for j in range(u0, u1):
                co[j] = cb[j]
            return
        for g in range(4):  # (one pass per few arrays: LLVM vectorises these)
            for j in range(g * H + u0, g * H + u1):
                a[j] = x_[j] + g_[j]
        ai, af = a[u0:u1], a[H + u0:H + u1]
        ag, ao = a[2 * H + u0:2 * H + u1], a[3 * H + u0:3 * H + u1]
        cu, n = cb[u0:u1], u1 - u0
        if cell == LSTM_P:
            p0, p1 = p.peep[0, u0:u1], p.peep[1, u0:u1]
            for j in range(n):
                ai[j] += p0[j] * cu[j]
            for j in range(n):
                af[j] += p1[j] * cu[j]
        for j in range(n):
            ai[j] = sigmoid(ai[j])
        for j in range(n):
            af[j] = sigmoid(af[j])
        for j in range(n):
            ag[j] = tanh(ag[j])
        for j in range(n):
            cu[j] = af[j] * cu[j] + ai[j] * ag[j]
        if cell == LSTM_P:
            p2 = p.peep[2, u0:u1]
            for j in range(n):
                ao[j] += p2[j] * cu[j]
        for j in range(n):
            ao[j] = sigmoid(ao[j])
        for j in range(u0, u1):
            co[j] = cb[j]
        if p.ln_c.size == 0:
            for j in range(u0, u1):
                nw[j] = tanh(cb[j])
            _lstm_m(ts, b, a, s, new, u0, u1)
    elif cell == GRU:
        if t >= lengths[b]:
            return
        hn = s.hn[ts, b]
        for j in range(u0, u1):
            a[j] = sigmoid(x_[j] + g_[j])
            a[H + j] = sigmoid(x_[H + j] + g_[H + j])
            hn[j] = g_[2 * H + j]
            n_ = tanh(x_[2 * H + j] + a[j] * hn[j])
            a[2 * H + j] = n_
            nw[j] = n_ + a[H + j] * (h[b, j] - n_)
    else:
        if t >= lengths[b]:
            return
        for j in range(u0, u1):
            a[j] = rnn_activation(cell, x_[j] + g_[j])
            nw[j] = a[j]


@jit()
def lstm_output(ts, b, c, p, s, new, u0, u1, mean, rs):
    """An LSTM's ``h~ = o * tanh(LN(c'))`` for row ``b``'s units ``u0 <= j < u1``, the
    norm's ``mean`` and ``rs = 1 / sqrt(var + eps)`` given."""
    nw, cb, ch = new[b], c[b], s.c_hat[ts, b]
    for j in range(u0, u1):
        ch[j] = (cb[j] - mean) * rs
    lw, lb = p.ln_c, p.ln_c_bias
    for j in range(u0, u1):
        nw[j] = tanh(ch[j] * lw[j] + lb[j])
    _lstm_m(ts, b, s.acts[ts, b], s, new, u0, u1)


@jit()
def _lstm_m(ts, b, a, s, new, u0, u1):
    """``new *= o`` on row ``b``'s units, kept in ``s.m`` (a projection's input)."""
    H = new.shape[1]
    nw, m = new[b], s.m[ts if s.m.shape[0] > 1 else 0, b]
    for j in range(u0, u1):
        nw[j] *= a[3 * H + j]
    for j in range(u0, u1):
        m[j] = nw[j]


@jit()
def _reset_gates(t, ts, xg, hg, h, lengths, p, s, r0, r1):
    """The reset-before GRU's first part of step ``t`` (rows ``r0 <= b < r1``): ``r``,
    ``z`` into the activations and ``r * h`` into ``s.hn`` (the second product's input; zero
    past a row's length)."""
    H = h.shape[1]
    for b in range(r0, r1):
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
def _reset_before_n(t, ts, xg, hrn, h, lengths, p, s, new, r0, r1):
    """Its second part: ``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)`` from the second
    product ``hrn [B,>=H]``, and ``new = (1 - z) * n + z * h``."""
    H = h.shape[1]
    for b in range(r0, r1):
        if t >= lengths[b]:
            continue
        a, x_, g_, hb, nw = s.acts[ts, b], xg[b], hrn[b], h[b], new[b]
        for j in range(H):
            n = tanh(x_[2 * H + j] + g_[j] + p.b_hh[2 * H + j])
            a[2 * H + j] = n
            nw[j] = n + a[H + j] * (hb[j] - n)


@jit()
def _finish_step(t, new, h, zoneout, lengths, y, r0, r1):
    """The state after step ``t`` (rows ``r0 <= b < r1``): :func:`finish_units` in
    place, every unit."""
    for b in range(r0, r1):
        finish_units(t, b, new, h, h, zoneout, lengths, y, 0, h.shape[1])


@jit()
def finish_units(t, b, new, h, h_next, zoneout, lengths, y, u0, u1):
    """Row ``b``'s state after step ``t`` for units ``u0 <= j < u1``: ``h_next = m * h +
    (1 - m) * new`` (``zoneout [T,B,S]`` the factors ``m``, or empty for none) where the
    row has a step, else ``h``; the output ``y[t]`` that state (zero past the row's
    length). ``h_next`` may be ``h``."""
    yb, hb, hx, nb = y[t, b], h[b], h_next[b], new[b]
    if t >= lengths[b]:
        for j in range(u0, u1):
            yb[j] = ZERO
        for j in range(u0, u1):
            hx[j] = hb[j]
        return
    if zoneout.shape[0] > 0:
        zb = zoneout[t, b]
        for j in range(u0, u1):
            hx[j] = zb[j] * hb[j] + (ONE - zb[j]) * nb[j]
    else:
        for j in range(u0, u1):
            hx[j] = nb[j]
    for j in range(u0, u1):
        yb[j] = hx[j]


def _zeros(shape, dt):
    """Zeros from the backend's pool of mapped blocks (:mod:`._alloc`)."""
    a = empty(shape, dt)
    a.fill(0)
    return a


def _scratch(shape, wanted, dt, zero=True):
    """Zeros (a padded row's entries stay zero: the gradient sums multiply them by zero
    gradients; ``zero=False`` for arrays every row of which is written or that only rows
    with a step read), or one step's scratch when not ``wanted``."""
    shape = shape if wanted else (1,) + tuple(shape[1:])
    return _zeros(shape, dt) if zero else empty(shape, dt)


def _params(w, GH, H, dt):
    def arr(a, shape):
        return np.zeros(shape, dt) if a is None else np.ascontiguousarray(a)
    empty = np.empty(0, dt)
    return Params(arr(w.b_hh, GH), arr(w.peepholes, (3, H)) if w.peepholes is not None
                  else np.empty((0, 0), dt), empty if w.ln_hh is None else w.ln_hh,
                  empty if w.ln_c is None else w.ln_c,
                  empty if w.ln_c_bias is None else w.ln_c_bias)


class Call(NamedTuple):
    """What a forward call's loop takes, made by :func:`prepare`: ``xg [T,B,G*H]`` the
    input side (normalised, with ``b_ih``) and its norm's ``x_hat``, ``x_rstd`` (None
    without), ``lengths [B]``, :class:`Params`, :class:`Steps`, the zoneout factors
    ``zone`` (``[0,B,S]`` for none), the states ``h``, ``c`` (copies, updated by the
    loop), the output ``y``, ``h_prev`` (each step's starting state when training, else
    empty) and ``new [B,H]`` scratch."""

    xg: Any
    x_hat: Any
    x_rstd: Any
    lengths: Any
    p: Params
    s: Steps
    zone: Any
    h: Any
    c: Any
    y: Any
    h_prev: Any
    new: Any


def forward(cell, x, state, w, seq, training, zoneout, chunks, packed=True):
    """Kernel contract forward (:mod:`fastrnn.kernels.contract`) of a layer-normalised
    cell or one with zoneout; ``chunks``: the threads' row blocks; ``packed``: pack the
    weights of the per-step products (else read them as they are)."""
    spec = get_cell(cell)
    H = w.w_hh.shape[0] // spec.gates
    a = prepare(spec, x, state, w, seq, training, zoneout, chunks.size - 1)
    # (the reset-before GRU: a second product a step, of W_hn with r * h)
    products = (_product(w.w_hh, True, packed),
                _product(w.w_hh[2 * H:] if spec.reset_before else None, True, packed),
                _product(w.w_hr, True, packed))
    _by_rows(_forward_rows, (CELL_IDS[spec.name], a.xg, a.h, a.c,
                             (a.lengths, bool(seq.reverse)), a.p, a.s, a.zone, a.y, a.h_prev,
                             a.new, *products), chunks)
    kept = None
    if training:
        kept = Kept(x, w, a.lengths, bool(seq.reverse), zoneout, a.x_hat, a.x_rstd, a.h_prev,
                    a.s)
    return a.y, State(a.h, a.c if spec.has_cell_state else None), kept


def prepare(spec, x, state, w, seq, training, zoneout, threads):
    """:class:`Call` for :func:`forward`'s arguments (cell ``spec``), the input side's
    norm on ``threads`` threads."""
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
        _by_rows(_normalize, (xg, np.ascontiguousarray(w.ln_ih), x_hat, x_rstd[:, 0]),
                 _rows(T * B, threads))
    if w.b_ih is not None:
        xg += w.b_ih
    xg = xg.reshape(T, B, GH)
    lstm, ln = spec.has_cell_state, w.ln_hh is not None
    steps = T if training else 1
    s = Steps(empty((steps, B, GH), dt), _scratch((steps, B, H), lstm, dt),
              _scratch((steps, B, H), lstm, dt), _scratch((steps, B, GH), ln, dt, zero=False),
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
    return Call(xg, x_hat, x_rstd, lengths, p, s, zone, h, c, y, h_prev, np.zeros((B, H), dt))


@jit()
def _forward_rows(cell, xg, h, c, seq, p, s, zone, y, h_prev, new, w_hh, w_hn, w_hr, r0,
                  r1):
    """Every step of :func:`forward` for rows ``r0 <= b < r1`` (a thread's block): the
    products' weights ``W_hh``, ``W_hn``, ``W_hr`` as :class:`Product` (the last two None
    where the cell has no second product or no projection: their code is then not
    compiled); ``h_prev [T,B,S]`` receives each step's starting state when training (empty
    when not); ``h``, ``c`` are updated to the final states."""
    wide_vectors()
    fpu = flush_denormals()
    lengths, reverse = seq
    T, B = y.shape[0], y.shape[1]
    S, H = h.shape[1], new.shape[1]
    keep = h_prev.shape[0] > 0
    hg = np.empty((B, width(w_hh, xg.shape[2])), y.dtype)
    hn = np.empty((B, width(w_hn, H)), y.dtype)
    hr = np.empty((B, width(w_hr, S)), y.dtype)
    for k in range(T):
        t = T - 1 - k if reverse else k
        ts = t if keep else 0
        if keep:
            for b in range(r0, r1):
                for j in range(S):
                    h_prev[t, b, j] = h[b, j]
        forward_product(h, r0, r1, w_hh, hg, k)
        if w_hn is not None:  # the reset-before GRU
            _reset_gates(t, ts, xg[t], hg, h, lengths, p, s, r0, r1)
            forward_product(s.hn[ts], r0, r1, w_hn, hn, k)
            _reset_before_n(t, ts, xg[t], hn, h, lengths, p, s, new, r0, r1)
        else:
            _forward_step(cell, t, ts, xg[t], hg, h, c, lengths, p, s, new, r0, r1)
        if w_hr is not None:
            forward_product(new, r0, r1, w_hr, hr, k)
            _finish_step(t, hr, h, zone, lengths, y, r0, r1)
        else:
            _finish_step(t, new, h, zone, lengths, y, r0, r1)
    restore(fpu)


@jit()
def _backward_step(cell, t, d, dc, hp, lengths, p, s, gx, gh, direct, dlnc, r0, r1):
    """Step ``t`` backwards for rows ``r0 <= b < r1``: ``d [B,>=H]`` the gradient reaching
    the cell's
    output (``h~``; the LSTMs' ``o * tanh(LN(c'))``), ``dc [B,H]`` the one reaching ``c'``
    (updated to ``c``'s), ``hp [B,H]`` the state the step started from; ``gx``, ``gh
    [B,G*H]`` receive the gate pre-activations'
    gradients (input and recurrent side), ``direct [B,H]`` the part of ``dh_prev`` not
    through ``w_hh`` and ``dlnc [B,H]`` the gradient reaching ``LN(c')``; zero past a
    row's length."""
    GH, H = gx.shape[1], direct.shape[1]
    for b in range(r0, r1):
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
                _normalize_grad(dlnc, s.c_hat[t], s.c_rstd[t, :, 0], p.ln_c, direct, b,
                                b + 1)
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
def _finish_grad(t, dh, dy, zoneout, lengths, d_new, r0, r1):
    """Where the gradient ``dh [B,S]`` reaching step ``t``'s state goes (rows ``r0 <= b <
    r1``): ``dh += dy[t]``
    (the row's output gradient, where it has a step), ``d_new`` receives the part that
    reaches the cell's output (``(1 - m) dh``), ``dh`` keeps the part that passes to the
    previous state directly (``m dh``; all of it past the row's length)."""
    S = dh.shape[1]
    zone = zoneout.shape[0] > 0
    for b in range(r0, r1):
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
def _reset_before_dn(t, d, lengths, s, gx, gh, r0, r1):
    """The reset-before GRU's backward, first part (rows ``r0 <= b < r1``): ``n``'s
    gradient into both gate gradients' ``n`` blocks (every gate zero past a row's
    length)."""
    H = gx.shape[1] // 3
    for b in range(r0, r1):
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
def _reset_before_grads(t, d, drh, hp, lengths, s, gx, gh, direct, r0, r1):
    """Its second part, from ``drh = dn @ W_hn`` (the gradient reaching ``r * h``): ``r``'s
    and ``z``'s gradients, and ``direct = z * d + drh * r``."""
    H = direct.shape[1]
    for b in range(r0, r1):
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
def _add_rows(dh, prod, direct, lengths, t, r0, r1):
    """``dh += prod + direct`` for the rows ``r0 <= b < r1`` with a step ``t``."""
    S = dh.shape[1]
    for b in range(r0, r1):
        if t < lengths[b]:
            hb, pb, db_ = dh[b], prod[b], direct[b]
            for j in range(S):
                hb[j] += pb[j] + db_[j]


def backward(cell, saved, dy, dstate_n, chunks, packed=True):
    """Kernel contract backward (:mod:`fastrnn.kernels.contract`) of :func:`forward`;
    ``chunks``: the threads' row blocks; ``packed``: as :func:`forward`'s."""
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
    rb = spec.reset_before
    products = (_product(w.w_hh[:2 * H] if rb else w.w_hh, False, packed),
                _product(w.w_hh[2 * H:] if rb else None, False, packed),
                _product(w.w_hr, False, packed))
    _by_rows(_backward_rows, (CELL_IDS[spec.name], dh, dc, dy, saved.h_prev,
                              (lengths, saved.reverse), p, s, zone,
                              (dgx, dgh, dgh_raw, dlnc, dhs), *products), chunks)
    dgx_raw = dgx
    if w.ln_ih is not None:
        dgx_raw = empty((T * B, GH), dt)
        _by_rows(_normalize_grad, (dgx.reshape(T * B, GH), saved.x_hat, saved.x_rstd[:, 0],
                                   np.ascontiguousarray(w.ln_ih), dgx_raw),
                 _rows(T * B, chunks.size - 1))
        dgx_raw = dgx_raw.reshape(T, B, GH)
    return (matmul(dgx_raw.reshape(T * B, GH), w.w_ih, empty((T * B, I), dt)).reshape(
                T, B, I), State(dh, dc if lstm else None),
            _weight_grads(spec, saved, dgx, dgh, dgx_raw, dgh_raw, dlnc, dhs, chunks))


@jit()
def _backward_rows(cell, dh, dc, dy, h_prev, seq, p, s, zone, grads, w_hh, w_hn, w_hr, r0,
                   r1):
    """Every step of :func:`backward` in reverse for rows ``r0 <= b < r1`` (a thread's
    block): the products' weights ``W_hh``, ``W_hn``, ``W_hr`` as :class:`Product` (the
    reset-before GRU's ``W_hh`` its ``r``, ``z`` rows, ``W_hn`` the rest; None where the
    cell has none); ``grads = (dgx, dgh, dgh_raw, dlnc, dhs)`` receive the gate
    gradients of every step (``dgh_raw`` before the recurrent side's norm: ``dgh`` itself
    without one), the gradients reaching ``LN(c')`` and, with a projection, the projected
    state's; ``dh``, ``dc`` end as the initial states'."""
    wide_vectors()
    fpu = flush_denormals()
    lengths, reverse = seq
    dgx, dgh, dgh_raw, dlnc, dhs = grads
    T, B, GH = dgx.shape
    S, H = dh.shape[1], dc.shape[1]
    ln = p.ln_hh.size > 0
    prod = np.empty((B, width(w_hh, S)), dh.dtype)
    drh = np.empty((B, width(w_hn, S)), dh.dtype)
    d_cell = np.empty((B, width(w_hr, H)), dh.dtype)
    d_new = np.empty((B, S), dh.dtype)
    direct = np.empty((B, H), dh.dtype)
    for k in range(T):
        t = k if reverse else T - 1 - k
        _finish_grad(t, dh, dy, zone, lengths, d_new, r0, r1)
        d = d_new
        if w_hr is not None:
            for b in range(r0, r1):
                for j in range(S):
                    dhs[t, b, j] = d_new[b, j]
            backward_product(d_new, r0, r1, w_hr, d_cell, k)
            d = d_cell
        if w_hn is not None:  # the reset-before GRU: dn, d(r * h) = dn @ W_hn, then the
            # rest; W_hh: [dr dz]
            _reset_before_dn(t, d, lengths, s, dgx[t], dgh[t], r0, r1)
            backward_product(dgh[t][:, 2 * H:], r0, r1, w_hn, drh, k)
            _reset_before_grads(t, d, drh, h_prev[t], lengths, s, dgx[t], dgh[t],
                                direct, r0, r1)
            backward_product(dgh[t][:, :2 * H], r0, r1, w_hh, prod, k)
        else:
            _backward_step(cell, t, d, dc, h_prev[t], lengths, p, s, dgx[t], dgh[t],
                           direct, dlnc[t], r0, r1)
            if ln:
                _normalize_grad(dgh[t], s.h_hat[t], s.h_rstd[t, :, 0], p.ln_hh,
                                dgh_raw[t], r0, r1)
            backward_product(dgh_raw[t], r0, r1, w_hh, prod, k)
        _add_rows(dh, prod, direct, lengths, t, r0, r1)
    restore(fpu)


def _weight_grads(spec, saved, dgx, dgh, dgx_raw, dgh_raw, dlnc, dhs, chunks):
    """Every weight's gradient from the gate gradients of all steps (``chunks``: only their
    number counts, the threads')."""
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
    blocks = _rows(rows, chunks.size - 1)
    _column_sums(dgx.reshape(rows, GH), saved.x_hat if ln else no_rows, sx, sx_hat, blocks)
    _column_sums(dgh.reshape(rows, GH), s.h_hat.reshape(rows, GH) if ln else no_rows, sh,
                 sh_hat, blocks)
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
