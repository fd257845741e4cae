"""The unit-split loops: for batches too small to share out between threads.

At batch 1 (generation, C1) the batch-split loops of :mod:`._loops` have one row and run on
one core, reading all of ``w_hh`` from that core's cache every step; at moderate batch with
large weights (C5: 4 MB) every thread streams all of ``w_hh`` from the shared L3 each step.
Here each thread owns a block of hidden units, with every gate row of those units: it
computes their recurrent products, gates and states, so ``w_hh`` is split between the
cores' caches and so is the pointwise work. The threads meet at one barrier per step:

- forward: the hidden state is double-buffered (step ``s`` reads ``hbuf[s % 2]`` and
  writes the other), so nobody overwrites a state another thread is still reading;
- backward: a thread writes the gate gradients of its units, waits for everyone's, then
  computes the state gradient of its units from all of them (``dgh[t] @ w_hh[:, units]``);
  each step's gate gradients have their own slot, so no second barrier is needed.

If the threads turn out to run one after another, the first does every block alone (no
deadlock, see :func:`._sync.start`).
"""

import numpy as np
from numba import prange

from ._fpu import flush_denormals, restore
from ._gemm import gemm_panels, matvec
from ._jit import jit
from ._math import GRU, LSTM, copy, rnn_activation, rnn_activation_grad, sigmoid, tanh
from ._sync import PARALLEL, barrier, start

ONE = np.float32(1)
ZERO = np.float32(0)


@jit()
def _units_step(cell, t, ts, q, u0, u1, xg, w_hh, wp, starts, b_ih, b_gates, b_hh, cur, nxt,
                c, hg, lengths, y, acts, h_prev, c_all, hn_all):
    """Step ``t`` for hidden units ``[u0, u1)`` (block ``q``) of every row: read ``cur``,
    write ``nxt``. The recurrent products come from :func:`._gemm.matvec` on ``w_hh`` when
    ``wp`` is empty (columns as in ``w_hh``), else from the panels of ``wp`` (gate ``g`` of
    block ``q`` is block ``q*G+g`` of :func:`._gemm.pack_blocks`)."""
    B = hg.shape[0]
    H = cur.shape[1]
    G = xg.shape[2] // H
    n = u1 - u0
    rowdot = wp.shape[0] == 0
    NR = 1 if rowdot else wp.shape[2]
    if rowdot:
        for g in range(G):
            matvec(cur, 0, B, w_hh, g * H + u0, g * H + u1, hg)
    else:
        gemm_panels(cur, 0, B, wp, starts[q * G], starts[q * G + G], hg, t)
    for b in range(B):
        hc, hx = cur[b, u0:u1], nxt[b, u0:u1]
        copy(h_prev[ts, b, u0:u1], hc)
        if t >= lengths[b]:  # padding: the state passes through, the output is zero
            copy(hx, hc)
            yb = y[t, b]
            for j in range(u0, u1):  # (Numba miscompiles a slice fill in prange)
                yb[j] = ZERO
            if cell == LSTM:
                copy(c_all[ts, b, u0:u1], c[b, u0:u1])
            continue
        xr, gr, ar = xg[t, b], hg[b], acts[ts, b]
        if cell == LSTM:
            for g in range(4):
                o = g * H
                cg = g * H + u0 if rowdot else starts[q * G + g] * NR
                gq, xq, bq, aq = gr[cg:cg + n], xr[o + u0:o + u1], \
                    b_gates[o + u0:o + u1], ar[o + u0:o + u1]
                if g == 2:
                    for j in range(u1 - u0):
                        aq[j] = tanh(gq[j] + xq[j] + bq[j])
                else:
                    for j in range(u1 - u0):
                        aq[j] = sigmoid(gq[j] + xq[j] + bq[j])
            ai, af = ar[u0:u1], ar[H + u0:H + u1]
            ag, ao = ar[2 * H + u0:2 * H + u1], ar[3 * H + u0:3 * H + u1]
            cb = c[b, u0:u1]
            for j in range(u1 - u0):
                cb[j] = af[j] * cb[j] + ai[j] * ag[j]
            for j in range(u1 - u0):
                hx[j] = ao[j] * tanh(cb[j])
            copy(c_all[ts, b, u0:u1], cb)
        elif cell == GRU:
            for g in range(2):  # r, z
                o = g * H
                cg = g * H + u0 if rowdot else starts[q * G + g] * NR
                gq, xq, bq, aq = gr[cg:cg + n], xr[o + u0:o + u1], \
                    b_gates[o + u0:o + u1], ar[o + u0:o + u1]
                for j in range(u1 - u0):
                    aq[j] = sigmoid(gq[j] + xq[j] + bq[j])
            o = 2 * H
            hn = hn_all[ts, b, u0:u1]
            cg = o + u0 if rowdot else starts[q * G + 2] * NR
            gq, bq = gr[cg:cg + n], b_hh[o + u0:o + u1]
            for j in range(u1 - u0):  # W_hn h + b_hn, kept for backward
                hn[j] = gq[j] + bq[j]
            ar_, xq, an = ar[u0:u1], xr[o + u0:o + u1], ar[o + u0:o + u1]
            bi = b_ih[o + u0:o + u1]
            for j in range(u1 - u0):
                an[j] = xq[j] + bi[j]
            for j in range(u1 - u0):  # n
                an[j] = tanh(an[j] + ar_[j] * hn[j])
            az = ar[H + u0:H + u1]
            for j in range(u1 - u0):
                hx[j] = an[j] + az[j] * (hc[j] - an[j])
        else:
            cg = u0 if rowdot else starts[q] * NR
            gq, xq, bq, aq = gr[cg:cg + n], xr[u0:u1], b_gates[u0:u1], ar[u0:u1]
            for j in range(u1 - u0):
                aq[j] = rnn_activation(cell, gq[j] + xq[j] + bq[j])
            copy(hx, aq)
        copy(y[t, b, u0:u1], hx)


@jit(parallel=True)
def forward_loop_split(cell, xg, w_hh, wp, starts, b_ih, b_gates, b_hh, hbuf, c, hg, lengths,
                       reverse, units, sync, y, acts, h_prev, c_all, hn_all, x2, w_ih, xg2,
                       per):
    """Same results as :func:`._loops.forward_loop`. ``units [P+1]``: the unit blocks of the
    ``P`` threads; ``hbuf [2,B,H]`` holds ``h0`` in slot 0 and ends with ``h_n`` in slot
    ``T % 2``; ``c`` holds ``c0`` and ends as ``c_n``; ``w_hh`` or ``wp``/``starts``: the
    weights (see :func:`_units_step`); ``xg`` is the input projection without bias: the
    biases enter in the gate passes as in :func:`._loops.forward_loop` (``b_gates = b_ih +
    b_hh``); ``hg`` is scratch for the products; ``sync`` is a zeroed ``int64 [3]``.
    With ``per > 0`` the loop computes ``xg`` itself: every ``per`` steps each thread
    projects the next ``per`` steps' rows of ``x2 = x [T*B,I]`` onto its units' rows of
    ``w_ih`` (:func:`._gemm.matvec`, into ``xg2``, ``xg`` as ``[T*B,G*H]``): it reads only
    its own columns of ``xg``, so no barrier is needed for them."""
    T = xg.shape[0]
    B = hbuf.shape[1]
    H = hbuf.shape[2]
    G = xg.shape[2] // H
    P = units.size - 1
    keep = acts.shape[0] == T
    for p in prange(P):
        fpu = flush_denormals()
        mode = start(sync, P)
        if mode != 0:
            meet = mode == PARALLEL
            q0, q1 = (p, p + 1) if meet else (0, P)
            for s in range(T):
                t = T - 1 - s if reverse else s
                ts = t if keep else 0
                cur, nxt = hbuf[s % 2], hbuf[1 - s % 2]
                if per > 0 and s % per == 0:
                    n = min(per, T - s)
                    lo = T - s - n if reverse else s  # the steps' times are lo .. lo+n-1
                    for q in range(q0, q1):
                        for g in range(G):
                            matvec(x2, lo * B, (lo + n) * B, w_ih, g * H + units[q],
                                   g * H + units[q + 1], xg2)
                for q in range(q0, q1):
                    _units_step(cell, t, ts, q, units[q], units[q + 1], xg, w_hh, wp,
                                starts, b_ih, b_gates, b_hh, cur, nxt, c, hg, lengths, y,
                                acts, h_prev, c_all, hn_all)
                if meet:
                    barrier(sync, P, s + 1)
        restore(fpu)


@jit()
def forward_loop_serial(cell, xg, w_hh, wp, starts, b_ih, b_gates, b_hh, hbuf, c, hg, lengths,
                        reverse, units, y, acts, h_prev, c_all, hn_all):
    """:func:`forward_loop_split` with every unit block on the calling thread and no
    parallel region: for a call too small to share (a step of generation), where starting
    even a one-thread region, and narrowing Numba's thread setting for it, costs a good part
    of the step. The caller flushes denormals."""
    T = xg.shape[0]
    keep = acts.shape[0] == T
    for s in range(T):
        t = T - 1 - s if reverse else s
        ts = t if keep else 0
        cur, nxt = hbuf[s % 2], hbuf[1 - s % 2]
        for q in range(units.size - 1):
            _units_step(cell, t, ts, q, units[q], units[q + 1], xg, w_hh, wp, starts, b_ih,
                        b_gates, b_hh, cur, nxt, c, hg, lengths, y, acts, h_prev, c_all,
                        hn_all)


@jit()
def _units_grad(cell, t, first, tp, u0, u1, dy, dh, dc, c0, lengths, acts, h_prev, c_all,
                hn_all, dgx, dgh, direct, tc, db):
    """The gate gradients of step ``t`` for hidden units ``[u0, u1)`` of every row (the
    pointwise part of :func:`._loops.backward_loop`, restricted to these units), added
    into the bias sums ``db [G*H + H]`` at these units' columns."""
    B = dh.shape[0]
    H = dh.shape[1]
    G = dgh.shape[2] // H
    n = u1 - u0
    for b in range(B):
        gx, gh = dgx[t, b], dgh[t, b]
        if t >= lengths[b]:  # padding: no gate gradient; the state's passes through
            for g in range(G):
                for j in range(g * H + u0, g * H + u1):
                    gx[j] = ZERO
                    gh[j] = ZERO
            continue
        dhb, dyb = dh[b, u0:u1], dy[t, b, u0:u1]
        for j in range(n):
            dhb[j] += dyb[j]  # now the total gradient reaching this step's h
        ar = acts[t, b]
        if cell == LSTM:
            ai, af = ar[u0:u1], ar[H + u0:H + u1]
            ag, ao = ar[2 * H + u0:2 * H + u1], ar[3 * H + u0:3 * H + u1]
            dcb, cr = dc[b, u0:u1], c_all[t, b, u0:u1]
            cp = c0[b, u0:u1] if first else c_all[tp, b, u0:u1]
            for j in range(n):
                tc[j] = tanh(cr[j])
            for j in range(n):
                dcb[j] += dhb[j] * ao[j] * (ONE - tc[j] * tc[j])
            gi, gf = gh[u0:u1], gh[H + u0:H + u1]
            gg, go = gh[2 * H + u0:2 * H + u1], gh[3 * H + u0:3 * H + u1]
            for j in range(n):
                gi[j] = dcb[j] * ag[j] * ai[j] * (ONE - ai[j])
            for j in range(n):
                gf[j] = dcb[j] * cp[j] * af[j] * (ONE - af[j])
            for j in range(n):
                gg[j] = dcb[j] * ai[j] * (ONE - ag[j] * ag[j])
            for j in range(n):
                go[j] = dhb[j] * tc[j] * ao[j] * (ONE - ao[j])
            for j in range(n):
                dcb[j] *= af[j]
        elif cell == GRU:
            ar_, az, an = ar[u0:u1], ar[H + u0:H + u1], ar[2 * H + u0:2 * H + u1]
            hp, hnr = h_prev[t, b, u0:u1], hn_all[t, b, u0:u1]
            xr_, xz, xn = gx[u0:u1], gx[H + u0:H + u1], gx[2 * H + u0:2 * H + u1]
            for j in range(n):
                xn[j] = dhb[j] * (ONE - az[j]) * (ONE - an[j] * an[j])
            for j in range(n):
                xr_[j] = xn[j] * hnr[j] * ar_[j] * (ONE - ar_[j])
            for j in range(n):
                xz[j] = dhb[j] * (hp[j] - an[j]) * az[j] * (ONE - az[j])
            hr, hz, hn_ = gh[u0:u1], gh[H + u0:H + u1], gh[2 * H + u0:2 * H + u1]
            for j in range(n):
                hr[j] = xr_[j]
                hz[j] = xz[j]
            for j in range(n):
                hn_[j] = xn[j] * ar_[j]
            dr = direct[b, u0:u1]
            for j in range(n):
                dr[j] = dhb[j] * az[j]
            dbn = db[G * H + u0:G * H + u1]
            for j in range(n):
                dbn[j] += hn_[j]
        else:
            aq, gq = ar[u0:u1], gh[u0:u1]
            for j in range(n):
                gq[j] = rnn_activation_grad(cell, dhb[j], aq[j])
        for g in range(G):
            dbg, xg_ = db[g * H + u0:g * H + u1], gx[g * H + u0:g * H + u1]
            for j in range(n):
                dbg[j] += xg_[j]


@jit(parallel=True)
def backward_loop_split(cell, wp, starts, dy, dh, dc, c0, lengths, reverse, units, sync,
                        acts, h_prev, c_all, hn_all, dgx, dgh, dhp, direct, db):
    """Same results as :func:`._loops.backward_loop`. ``dh``, ``dc`` hold ``dh_n``,
    ``dc_n`` and end as ``dh0``, ``dc0``; ``wp``/``starts``: column block ``q`` of
    ``w_hh`` (unit block ``q``) packed by :func:`._gemm.pack_column_blocks`; ``dhp`` is
    scratch for the products, ``direct [B,H]`` zeroed scratch (the GRU's ``z * dh``);
    ``db [1, G*H + H]`` (zeroed) receives the bias sums as in :func:`._loops.backward_loop`
    (each thread adds only its units' columns)."""
    T = dgh.shape[0]
    B = dh.shape[0]
    P = units.size - 1
    NR = wp.shape[2]
    for p in prange(P):
        fpu = flush_denormals()
        tc = np.empty(dh.shape[1], dgh.dtype)
        mode = start(sync, P)
        if mode != 0:
            meet = mode == PARALLEL
            q0, q1 = (p, p + 1) if meet else (0, P)
            for s in range(T):
                t = s if reverse else T - 1 - s
                first = t == (T - 1 if reverse else 0)
                tp = t + 1 if reverse else t - 1
                for q in range(q0, q1):
                    _units_grad(cell, t, first, tp, units[q], units[q + 1], dy, dh, dc, c0,
                                lengths, acts, h_prev, c_all, hn_all, dgx, dgh, direct, tc,
                                db[0])
                if meet:
                    barrier(sync, P, s + 1)  # every unit's gate gradients are in dgh[t]
                for q in range(q0, q1):
                    gemm_panels(dgh[t], 0, B, wp, starts[q], starts[q + 1], dhp, t)
                    u0, col = units[q], starts[q] * NR
                    for b in range(B):
                        if t < lengths[b]:
                            for j in range(units[q + 1] - u0):
                                dh[b, u0 + j] = dhp[b, col + j] + direct[b, u0 + j]
        restore(fpu)
