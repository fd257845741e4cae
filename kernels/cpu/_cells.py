"""The pointwise step of every cell, forward and backward, defined once for the CPU kernels.

Every loop kind (:mod:`._loops` splits the batch, :mod:`._split` the hidden units) calls
these for one batch row and one block of hidden units ``[u0, u0 + n)`` after the step's
recurrent product; the equations are those of :mod:`fastrnn.kernels.cells`. Row vectors
(``xr``, ``ar``, ``gx``, ``gh``, the biases) are indexed by gate as ``g*H + u0 + j``; the
recurrent products of gate ``g`` start at ``gr[gate_at[g]]`` (where a loop's packed
weights put them); per-unit state vectors are the block's slices.

Each pass is a plain loop from 0 over at most four arrays: more arrays per loop exceed
LLVM's budget of run-time alias checks and the loop stays scalar, and a range that starts at
a run-time value keeps Numba's negative-index check in the loop (docs/performance-notes.md,
"The pointwise passes").
"""

import numpy as np

from ._jit import jit
from ._math import (GRU, GRU_RB, LSTM, LSTM_P, copy, rnn_activation, rnn_activation_grad,
                    sigmoid, tanh)

ONE = np.float32(1)  # float32 literals: a Python float would promote float32 loops
ZERO = np.float32(0)


@jit()
def forward_first(u0, n, H, gr, gate_at, xr, bias, hp, ar, rh):
    """The part of a ``gru_reset_before`` step before its second product: ``r`` and ``z``
    of units ``[u0, u0+n)`` into ``ar``, and ``rh = r * h`` (the second product's input,
    kept for backward)."""
    bg = bias.gates
    for g in range(2):
        o = g * H + u0
        gq, xq, bq, aq = gr[gate_at[g]:gate_at[g] + n], xr[o:o + n], bg[o:o + n], ar[o:o + n]
        for j in range(n):
            aq[j] = sigmoid(gq[j] + xq[j] + bq[j])
    ar_ = ar[u0:u0 + n]
    for j in range(n):
        rh[j] = ar_[j] * hp[j]


@jit()
def forward_step(cell, u0, n, H, gr, gate_at, xr, bias, hp, hx, c, ar, hn):
    """Gates and new state of units ``[u0, u0+n)`` of one row.

    ``gr``/``gate_at``: the recurrent products (without bias); ``xr [G*H]``: the input
    projection (without bias); ``bias``: :class:`.Biases` (with the peepholes);
    ``hp``, ``hx``: the units' previous and new state (may be the same array); ``c``: their
    cell state (LSTM, updated in place); ``ar [G*H]`` receives the activations, ``hn`` the
    GRU's ``W_hn h + b_hn`` (both kept for backward)."""
    bg = bias.gates
    if cell == LSTM:
        for g in range(4):
            o = g * H + u0
            gq, xq, bq, aq = gr[gate_at[g]:gate_at[g] + n], xr[o:o + n], bg[o:o + n], \
                ar[o:o + n]
            if g == 2:
                for j in range(n):
                    aq[j] = tanh(gq[j] + xq[j] + bq[j])
            else:
                for j in range(n):
                    aq[j] = sigmoid(gq[j] + xq[j] + bq[j])
        ai, af = ar[u0:u0 + n], ar[H + u0:H + u0 + n]
        ag, ao = ar[2 * H + u0:2 * H + u0 + n], ar[3 * H + u0:3 * H + u0 + n]
        for j in range(n):
            c[j] = af[j] * c[j] + ai[j] * ag[j]
        for j in range(n):
            hx[j] = ao[j] * tanh(c[j])
    elif cell == LSTM_P:
        for g in range(4):  # pre-activations first: the peepholes need c, then c'
            o = g * H + u0
            gq, xq, bq, aq = gr[gate_at[g]:gate_at[g] + n], xr[o:o + n], bg[o:o + n], \
                ar[o:o + n]
            for j in range(n):
                aq[j] = gq[j] + xq[j] + bq[j]
        ai, af = ar[u0:u0 + n], ar[H + u0:H + u0 + n]
        ag, ao = ar[2 * H + u0:2 * H + u0 + n], ar[3 * H + u0:3 * H + u0 + n]
        pe = bias.peep
        pi, pf, po = pe[0, u0:u0 + n], pe[1, u0:u0 + n], pe[2, u0:u0 + n]
        for j in range(n):
            ai[j] = sigmoid(ai[j] + pi[j] * c[j])
        for j in range(n):
            af[j] = sigmoid(af[j] + pf[j] * c[j])
        for j in range(n):
            ag[j] = tanh(ag[j])
        for j in range(n):
            c[j] = af[j] * c[j] + ai[j] * ag[j]
        for j in range(n):
            ao[j] = sigmoid(ao[j] + po[j] * c[j])
        for j in range(n):
            hx[j] = ao[j] * tanh(c[j])
    elif cell == GRU:
        for g in range(2):  # r, z
            o = g * H + u0
            gq, xq, bq, aq = gr[gate_at[g]:gate_at[g] + n], xr[o:o + n], bg[o:o + n], \
                ar[o:o + n]
            for j in range(n):
                aq[j] = sigmoid(gq[j] + xq[j] + bq[j])
        o = 2 * H + u0
        gq, bq = gr[gate_at[2]:gate_at[2] + n], bias.hh[o:o + n]
        for j in range(n):  # W_hn h + b_hn, kept for backward
            hn[j] = gq[j] + bq[j]
        xq, bi, an = xr[o:o + n], bias.ih[o:o + n], ar[o:o + n]
        for j in range(n):
            an[j] = xq[j] + bi[j]
        ar_ = ar[u0:u0 + n]
        for j in range(n):  # n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
            an[j] = tanh(an[j] + ar_[j] * hn[j])
        az = ar[H + u0:H + u0 + n]
        for j in range(n):  # h' = (1 - z) * n + z * h
            hx[j] = an[j] + az[j] * (hp[j] - an[j])
    elif cell == GRU_RB:  # after forward_first and the product over r * h
        o = 2 * H + u0
        gq, xq, bq, an = gr[gate_at[2]:gate_at[2] + n], xr[o:o + n], bg[o:o + n], ar[o:o + n]
        for j in range(n):  # n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)
            an[j] = tanh(gq[j] + xq[j] + bq[j])
        az = ar[H + u0:H + u0 + n]
        for j in range(n):
            hx[j] = an[j] + az[j] * (hp[j] - an[j])
    else:
        gq, xq, bq, aq = gr[gate_at[0]:gate_at[0] + n], xr[u0:u0 + n], bg[u0:u0 + n], \
            ar[u0:u0 + n]
        for j in range(n):
            aq[j] = rnn_activation(cell, gq[j] + xq[j] + bq[j])
        copy(hx, aq)


@jit()
def backward_first(u0, n, H, dh, ar, gx, gh, dn):
    """The part of a ``gru_reset_before`` step's gradients before its product ``dn @
    W_hn``: ``dn`` (the ``n`` gate's) into ``gx`` and the contiguous ``dn``; ``gh``'s ``n``
    block is zero, so that the step's other product (``dgh @ W_hh``) covers ``r`` and
    ``z`` only (the weight gradient of ``W_hn`` comes from ``gx``)."""
    az, an = ar[H + u0:H + u0 + n], ar[2 * H + u0:2 * H + u0 + n]
    xn, hn_ = gx[2 * H + u0:2 * H + u0 + n], gh[2 * H + u0:2 * H + u0 + n]
    for j in range(n):
        dn[j] = dh[j] * (ONE - az[j]) * (ONE - an[j] * an[j])
    copy(xn, dn)
    for j in range(n):
        hn_[j] = ZERO


@jit()
def backward_step(cell, u0, n, H, dh, ar, cr, cp, dc, hp, hn, gx, gh, direct, tc, db, peep):
    """Gate gradients of units ``[u0, u0+n)`` of one row at one step.

    ``dh``: the units' total state gradient reaching the step (output gradient included);
    ``ar [G*H]``: the step's activations; ``cr``, ``cp``: the units' cell state after and
    before the step, ``dc`` its gradient (LSTM: in, the gradient after the step; out, the
    one before it); ``hp``: the state before the step, ``hn``: the GRU's ``W_hn h + b_hn``
    (``gru_reset_before``: ``d(r*h) = W_hn^T dn``, after :func:`backward_first`);
    ``gx``, ``gh [G*H]`` receive the input-side and recurrent-side pre-activation gradients
    (the same array except for the GRU); ``direct``: the GRU's ``z * dh`` path to the
    previous state (written); ``tc``: scratch of ``n``; ``db [G*H + 3*H]``: sums (``gx``
    at each gate column, then the GRU's ``n`` block of ``gh`` or ``lstm_peephole``'s
    peephole gradients), added to; ``peep [3,H]``: the peephole weights."""
    if cell == LSTM or cell == LSTM_P:  # (the peephole terms only for LSTM_P)
        peeps = cell == LSTM_P
        ai, af = ar[u0:u0 + n], ar[H + u0:H + u0 + n]
        ag, ao = ar[2 * H + u0:2 * H + u0 + n], ar[3 * H + u0:3 * H + u0 + n]
        gi, gf = gh[u0:u0 + n], gh[H + u0:H + u0 + n]
        gg, go = gh[2 * H + u0:2 * H + u0 + n], gh[3 * H + u0:3 * H + u0 + n]
        for j in range(n):
            tc[j] = tanh(cr[j])
        for j in range(n):
            go[j] = dh[j] * tc[j] * ao[j] * (ONE - ao[j])
        for j in range(n):
            dc[j] += dh[j] * ao[j] * (ONE - tc[j] * tc[j])
        if peeps:  # o saw c': dc' += do * p_o
            po = peep[2, u0:u0 + n]
            for j in range(n):
                dc[j] += go[j] * po[j]
        for j in range(n):
            gi[j] = dc[j] * ag[j] * ai[j] * (ONE - ai[j])
        for j in range(n):
            gf[j] = dc[j] * cp[j] * af[j] * (ONE - af[j])
        for j in range(n):
            gg[j] = dc[j] * ai[j] * (ONE - ag[j] * ag[j])
        for j in range(n):
            dc[j] *= af[j]
        if peeps:  # i and f saw c: dc += di * p_i + df * p_f, and the peepholes' sums
            pi, pf = peep[0, u0:u0 + n], peep[1, u0:u0 + n]
            for j in range(n):
                dc[j] += gi[j] * pi[j]
            for j in range(n):
                dc[j] += gf[j] * pf[j]
            G = 4
            dpi = db[G * H + u0:G * H + u0 + n]
            dpf = db[(G + 1) * H + u0:(G + 1) * H + u0 + n]
            dpo = db[(G + 2) * H + u0:(G + 2) * H + u0 + n]
            for j in range(n):
                dpi[j] += gi[j] * cp[j]
            for j in range(n):
                dpf[j] += gf[j] * cp[j]
            for j in range(n):
                dpo[j] += go[j] * cr[j]
    elif cell == GRU:
        ar_, az, an = ar[u0:u0 + n], ar[H + u0:H + u0 + n], ar[2 * H + u0:2 * H + u0 + n]
        xr_, xz, xn = gx[u0:u0 + n], gx[H + u0:H + u0 + n], gx[2 * H + u0:2 * H + u0 + n]
        for j in range(n):
            xn[j] = dh[j] * (ONE - az[j]) * (ONE - an[j] * an[j])
        for j in range(n):
            xr_[j] = xn[j] * hn[j] * ar_[j] * (ONE - ar_[j])
        for j in range(n):
            xz[j] = dh[j] * (hp[j] - an[j]) * az[j] * (ONE - az[j])
        hr, hz, hn_ = gh[u0:u0 + n], gh[H + u0:H + u0 + n], gh[2 * H + u0:2 * H + u0 + n]
        copy(hr, xr_)
        copy(hz, xz)
        for j in range(n):
            hn_[j] = xn[j] * ar_[j]
        for j in range(n):
            direct[j] = dh[j] * az[j]
        G = 3
        dbn = db[G * H + u0:G * H + u0 + n]
        for j in range(n):
            dbn[j] += hn_[j]
    elif cell == GRU_RB:
        ar_, az, an = ar[u0:u0 + n], ar[H + u0:H + u0 + n], ar[2 * H + u0:2 * H + u0 + n]
        xr_, xz = gx[u0:u0 + n], gx[H + u0:H + u0 + n]
        for j in range(n):  # hn holds d(r*h)
            xr_[j] = hn[j] * hp[j] * ar_[j] * (ONE - ar_[j])
        for j in range(n):
            xz[j] = dh[j] * (hp[j] - an[j]) * az[j] * (ONE - az[j])
        copy(gh[u0:u0 + n], xr_)
        copy(gh[H + u0:H + u0 + n], xz)
        for j in range(n):
            direct[j] = dh[j] * az[j] + hn[j] * ar_[j]
    else:
        aq, gq = ar[u0:u0 + n], gh[u0:u0 + n]
        for j in range(n):
            gq[j] = rnn_activation_grad(cell, dh[j], aq[j])
    G = gx.shape[0] // H
    for g in range(G):
        o = g * H + u0
        dbg, xg_ = db[o:o + n], gx[o:o + n]
        for j in range(n):
            dbg[j] += xg_[j]
