"""Layer-normalised cells and zoneout at batch 1-2, for inference: the hidden units split
between threads.

With one or two rows the batch split of :mod:`._norm` runs on one core, which reads all of
``w_hh`` every step. Here, as in :mod:`._split`, each thread owns a block of hidden units
with every gate row of them: it computes their recurrent products on ``w_hh`` as it is
(:func:`._gemm.matvec`) and the cell's step for them, so the weights are read by all the
cores at once. A LayerNorm needs statistics over a whole row, which no thread holds: each
thread reduces its own entries to a mean and a sum of squared deviations, and after a
barrier every thread combines all blocks' (Chan et al.'s pairwise formula, in float64).
Barriers a step: one after the products when ``W_hh h`` is normalised, one after ``c'``
when it is, one after the new state (the next step's products read all of it). The cell's
code is :mod:`._norm`'s, called for a block of units. Training calls keep what backward
needs and run in :mod:`._norm`.
"""

import numpy as np
from ..cells import get_cell
from ..contract import LN_EPS, State
from ._blas import on_threads
from ._fpu import flush_denormals, restore
from ._jit import jit, wide_vectors
from ._lowp import scaled_product
from ._math import CELL_IDS, has_cell_state
from ._norm import cell_units, finish_units, lstm_output, moments, prepare, scale_units
from ._sync import PARALLEL, barrier, start


def forward(cell, x, state, w, seq, zoneout, units):
    """Kernel contract forward (:mod:`fastrnn.kernels.contract`) of an inference call of a
    layer-normalised cell or one with zoneout (no reset-before GRU, no projection): the
    hidden units in the blocks ``units [threads+1]``, one a thread."""
    spec = get_cell(cell)
    a = prepare(spec, x, state, w, seq, False, zoneout, units.size - 1)
    T, B = x.shape[:2]
    hbuf = np.empty((2,) + a.h.shape, x.dtype)
    hbuf[0] = a.h
    forward_units(CELL_IDS[spec.name], a.xg, hbuf, a.c, (a.lengths, bool(seq.reverse)), a.p,
                  a.s, a.zone, a.y, a.new, np.ascontiguousarray(w.w_hh), units)
    return a.y, State(hbuf[T % 2].copy(), a.c if spec.has_cell_state else None), None


@jit()
def _combined(part, b, H, G, units):
    """``(mean, 1 / sqrt(var + eps))`` of row ``b`` from every unit block's ``part[q, b] =
    (mean, sum of squared deviations)`` over its ``G`` gates' entries."""
    P = units.size - 1
    N = G * H
    mean = 0.0
    for q in range(P):
        mean += part[q, b, 0] * (G * (units[q + 1] - units[q]))
    mean /= N
    m2 = 0.0
    for q in range(P):
        d = part[q, b, 0] - mean
        m2 += part[q, b, 1] + d * d * (G * (units[q + 1] - units[q]))
    return mean, 1.0 / np.sqrt(m2 / N + LN_EPS)


def forward_units(cell, xg, hbuf, c, seq, p, s, zone, y, new, w_hh, units):
    """Every step of an inference call, each block of ``units [P+1]`` on its own thread;
    ``xg [T,B,G*H]`` the normalised input side with ``b_ih``; ``hbuf [2,B,H]`` holds
    ``h0`` in slot 0 and ends with ``h_n`` in slot ``T % 2``; ``c`` holds ``c0`` and ends
    as ``c_n``; ``p``, ``s``: :class:`._norm.Params`, one step's :class:`._norm.Steps`;
    ``zone [T,B,H]`` the zoneout factors (empty for none); ``new [B,H]`` scratch."""
    B, GH = xg.shape[1], xg.shape[2]
    P = units.size - 1
    hg = np.empty((B, GH), y.dtype)  # (shared: each thread its units' columns)
    part = np.empty((P, B, 2))  # each block's (mean, squared deviations) of W_hh h
    part_c = np.empty((P, B, 2))  # of c'
    sync = np.zeros(3, np.int64)
    on_threads(_units_part, [(q, cell, xg, hbuf, c, seq, p, s, zone, y, new, w_hh, units,
                              sync, hg, part, part_c) for q in range(P)])


@jit()
def _units_part(q, cell, xg, hbuf, c, seq, p, s, zone, y, new, w_hh, units, sync, hg, part,
                part_c):
    """Thread ``q``'s part of :func:`forward_units` (every block, if it runs alone;
    ``sync`` a zeroed ``int64 [3]`` shared by the parts)."""
    lengths, reverse = seq
    T, B, GH = xg.shape
    H = hbuf.shape[2]
    G = GH // H
    P = units.size - 1
    ln = p.ln_hh.size > 0
    ln_c = has_cell_state(cell) and p.ln_c.size > 0
    no_scale = np.empty(0, np.float32)
    wide_vectors()
    fpu = flush_denormals()
    mode = start(sync, P)
    if mode != 0:
        meet = mode == PARALLEL
        q0, q1 = (q, q + 1) if meet else (0, P)
        met = 0
        for k in range(T):
            t = T - 1 - k if reverse else k
            cur, nxt = hbuf[k % 2], hbuf[1 - k % 2]
            back = k % 2 == 1  # start on the weights the last step read last
            for qq in range(q0, q1):
                u0, u1 = units[qq], units[qq + 1]
                for i in range(G):
                    g = G - 1 - i if back else i
                    scaled_product(cur, no_scale, w_hh, no_scale, g * H + u0, g * H + u1,
                                   hg, back)
                if ln:
                    for b in range(B):
                        part[qq, b, 0], part[qq, b, 1] = moments(hg[b], H, G, u0, u1)
            if ln and meet:
                met += 1
                barrier(sync, P, met)
            for qq in range(q0, q1):
                u0, u1 = units[qq], units[qq + 1]
                for b in range(B):
                    if ln:
                        mean, rs = _combined(part, b, H, G, units)
                        scale_units(hg[b], p.ln_hh, s.h_hat[0, b], H, G, u0, u1, mean,
                                     rs)
                    cell_units(cell, t, 0, b, xg[t], hg, cur, c, lengths, p, s, new, u0,
                                u1)
                    if ln_c:
                        part_c[qq, b, 0], part_c[qq, b, 1] = moments(c[b], H, 1, u0, u1)
            if ln_c and meet:
                met += 1
                barrier(sync, P, met)
            for qq in range(q0, q1):
                u0, u1 = units[qq], units[qq + 1]
                for b in range(B):
                    if ln_c and t < lengths[b]:
                        mean, rs = _combined(part_c, b, H, 1, units)
                        lstm_output(0, b, c, p, s, new, u0, u1, mean, rs)
                    finish_units(t, b, new, cur, nxt, zone, lengths, y, u0, u1)
            if meet:
                met += 1
                barrier(sync, P, met)
    restore(fpu)
