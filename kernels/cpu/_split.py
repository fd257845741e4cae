"""The unit-split forward loop: for batches too small to share out between threads.

At batch 1 (generation, C1) the batch-split loop of :mod:`._loops` has one row and runs on
one core, reading all of ``w_hh`` from that core's cache every step. Here each thread owns a
block of hidden units, with every gate row of those units: it computes their recurrent
products, their gates, cell state and new hidden state, so ``w_hh`` is split between the
cores' caches and so is the pointwise work. The threads meet at one barrier per step; the
hidden state is double-buffered (step ``s`` reads ``hbuf[s % 2]`` and writes the other), so
nobody overwrites a state another thread is still reading.
"""

import numpy as np
from numba import prange

from ._fpu import flush_denormals, restore
from ._jit import jit
from ._math import matmul_nt, sigmoid, tanh
from ._sync import PARALLEL, barrier, start

ZERO = np.float32(0)
RNN_TANH, RNN_RELU, RNN_SIGMOID, LSTM, GRU = 0, 1, 2, 3, 4  # as in ._loops


@jit()
def _units_step(cell, t, ts, u0, u1, xg, w_hh, b_hh, cur, nxt, c, hg, lengths,
                y, acts, h_prev, c_all, hn_all):
    """Step ``t`` for hidden units ``[u0, u1)`` of every row: read ``cur``, write ``nxt``."""
    B, GH = hg.shape
    H = cur.shape[1]
    G = GH // H
    for g in range(G):  # the recurrent products of these units' gate rows
        matmul_nt(cur, 0, B, w_hh, g * H + u0, g * H + u1, hg)
    for b in range(B):
        hc, hx = cur[b, u0:u1], nxt[b, u0:u1]
        h_prev[ts, b, u0:u1] = hc
        if t >= lengths[b]:  # padding: the state passes through, the output is zero
            hx[:] = hc
            y[t, b, u0:u1] = ZERO
            if cell == LSTM:
                c_all[ts, b, u0:u1] = c[b, u0:u1]
            continue
        xr, gr, ar = xg[t, b], hg[b], acts[ts, b]
        if cell == LSTM:
            for g in range(4):
                o = g * H
                gq, xq, bq, aq = gr[o + u0:o + u1], xr[o + u0:o + u1], \
                    b_hh[o + u0:o + u1], ar[o + u0:o + u1]
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
            c_all[ts, b, u0:u1] = cb
        elif cell == GRU:
            for g in range(2):  # r, z
                o = g * H
                gq, xq, bq, aq = gr[o + u0:o + u1], xr[o + u0:o + u1], \
                    b_hh[o + u0:o + u1], ar[o + u0:o + u1]
                for j in range(u1 - u0):
                    aq[j] = sigmoid(gq[j] + xq[j] + bq[j])
            o = 2 * H
            hn = hn_all[ts, b, u0:u1]
            gq, bq = gr[o + u0:o + u1], b_hh[o + u0:o + u1]
            for j in range(u1 - u0):  # W_hn h + b_hn, kept for backward
                hn[j] = gq[j] + bq[j]
            ar_, xq, an = ar[u0:u1], xr[o + u0:o + u1], ar[o + u0:o + u1]
            for j in range(u1 - u0):  # n
                an[j] = tanh(xq[j] + ar_[j] * hn[j])
            az = ar[H + u0:H + u1]
            for j in range(u1 - u0):
                hx[j] = an[j] + az[j] * (hc[j] - an[j])
        else:
            gq, xq, bq, aq = gr[u0:u1], xr[u0:u1], b_hh[u0:u1], ar[u0:u1]
            for j in range(u1 - u0):
                v = gq[j] + xq[j] + bq[j]
                if cell == RNN_TANH:
                    v = tanh(v)
                elif cell == RNN_RELU:
                    v = max(v, ZERO)
                else:
                    v = sigmoid(v)
                aq[j] = v
            hx[:] = aq
        y[t, b, u0:u1] = hx


@jit(parallel=True)
def forward_loop_split(cell, xg, w_hh, b_hh, hbuf, c, hg, lengths, reverse, units, sync,
                       y, acts, h_prev, c_all, hn_all):
    """Same results as :func:`._loops.forward_loop`. ``units [P+1]``: the unit blocks of the
    ``P`` threads; ``hbuf [2,B,H]`` holds ``h0`` in slot 0 and ends with ``h_n`` in slot
    ``T % 2``; ``c`` holds ``c0`` and ends as ``c_n``; ``hg [B,G*H]`` is scratch; ``sync``
    is a zeroed ``int64 [3]``. If the threads turn out to run one after another, the first
    does every block alone (no deadlock)."""
    T = xg.shape[0]
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
                for q in range(q0, q1):
                    _units_step(cell, t, ts, units[q], units[q + 1], xg, w_hh, b_hh, cur,
                                nxt, c, hg, lengths, y, acts, h_prev, c_all, hn_all)
                if meet:
                    barrier(sync, P, s + 1)
        restore(fpu)
