"""The unit-split loops: for batches too small to share out between threads.

At batch 1 (generation, C1) the batch-split loops of :mod:`._loops` have one row and run on
one core, reading all of ``w_hh`` from that core's cache every step; at moderate batch with
large weights (C5: 4 MB) every thread streams all of ``w_hh`` from the shared L3 each step.
Here each thread owns a block of hidden units, with every gate row of those units: it
computes their recurrent products, then the cell's pointwise step (:mod:`._cells`) for
them, so ``w_hh`` is split between the cores' caches and so is the pointwise work. The
threads meet at one barrier per step:

- forward: the hidden state is double-buffered (step ``s`` reads ``hbuf[s % 2]`` and
  writes the other), so nobody overwrites a state another thread is still reading;
- backward: a thread writes the gate gradients of its units, waits for everyone's, then
  computes the state gradient of its units from all of them (``dgh[t] @ w_hh[:, units]``);
  each step's gate gradients have their own slot, so no second barrier is needed.

If the threads turn out to run one after another, the first does every block alone (no
deadlock, see :func:`._sync.start`). Argument groups: :mod:`._args`.
"""

import numpy as np
from numba import prange

from ._args import Biases, Saved, Sequence, UnitWeights
from ._cells import backward_step, forward_step
from ._fpu import flush_denormals, restore
from ._gemm import gemm_panels, matvec, vecmat
from ._jit import jit
from ._lowp import product_input, scaled_product
from ._math import GRU, ROW0, copy, has_cell_state
from ._sync import PARALLEL, barrier, start

ZERO = np.float32(0)


@jit()
def _units_step(cell, t, ts, q, u0, u1, xg, weights, bias, cur, nxt, c, hg, lengths, y,
                saved):
    """Step ``t`` for hidden units ``[u0, u1)`` (block ``q``) of every row: read ``cur``,
    write ``nxt``. The recurrent products come from :func:`._gemm.matvec` on
    ``weights.w_hh`` when ``weights.packed`` is empty (columns as in ``w_hh``), else from
    the panels of block ``q``; when ``weights.w_hh`` has no rows, ``hg [B,G*H]`` already
    holds them (a one-step call). Unpacked ``w_hh`` may hold int8 or bfloat16 values
    (quantized inference, :class:`.UnitWeights`)."""
    B = hg.shape[0]
    H = cur.shape[1]
    G = xg.shape[2] // H
    n = u1 - u0
    wp, starts = weights.packed, weights.starts
    if weights.w_hh.shape[0] == 0:  # hg already holds the products (a one-step call's,
        # computed by BLAS), columns as in w_hh
        gate_at = (u0, H + u0, 2 * H + u0, 3 * H + u0)
    elif wp.shape[0] == 0:
        back = t % 2 == 1  # alternate: start on the weights the last step read last
        act, act_scale = product_input(cur, weights.w_hh)  # (float weights: cur)
        for i in range(G):
            g = G - 1 - i if back else i
            scaled_product(act, act_scale, weights.w_hh, weights.scale, g * H + u0,
                           g * H + u1, hg, back)
        gate_at = (u0, H + u0, 2 * H + u0, 3 * H + u0)
    else:
        gemm_panels(cur, ROW0, B, wp, starts[q * G], starts[q * G + G], hg, t)
        NR = wp.shape[2]
        gate_at = (starts[q * G] * NR, starts[q * G + min(1, G - 1)] * NR,
                   starts[q * G + min(2, G - 1)] * NR, starts[q * G + min(3, G - 1)] * NR)
    for b in range(B):
        hc, hx = cur[b, u0:u1], nxt[b, u0:u1]
        copy(saved.h_prev[ts, b, u0:u1], hc)
        if t >= lengths[b]:  # padding: the state passes through, the output is zero
            copy(hx, hc)
            yb = y[t, b]
            for j in range(u0, u1):  # (Numba miscompiles a slice fill in prange)
                yb[j] = ZERO
            if has_cell_state(cell):
                copy(saved.c_all[ts, b, u0:u1], c[b, u0:u1])
            continue
        forward_step(cell, u0, n, H, hg[b], gate_at, xg[t, b], bias, hc, hx, c[b, u0:u1],
                     saved.acts[ts, b], saved.hn_all[ts if cell == GRU else 0, b, u0:u1])
        if has_cell_state(cell):
            copy(saved.c_all[ts, b, u0:u1], c[b, u0:u1])
        copy(y[t, b, u0:u1], hx)


@jit(parallel=True)
def forward_loop_split(cell, proj, weights, bias, hbuf, c, hg, seq, units, sync, y, saved):
    """Same results as :func:`._loops.forward_loop`. ``units [P+1]``: the unit blocks of the
    ``P`` threads; ``hbuf [2,B,H]`` holds ``h0`` in slot 0 and ends with ``h_n`` in slot
    ``T % 2``; ``c`` holds ``c0`` and ends as ``c_n``; ``hg`` is scratch for the products;
    ``sync`` is a zeroed ``int64 [3]``. With ``proj.per > 0`` the loop computes ``proj.xg``
    itself: every ``per`` steps each thread projects the next ``per`` steps' rows of
    ``proj.x [T*B,I]`` onto its units' rows of ``proj.w = w_ih`` (:func:`._gemm.matvec`):
    it reads only its own columns of ``xg``, so no barrier is needed for them. Quantized
    weights (``proj.w``, ``weights.w_hh``: int8 or bfloat16 values, int8's row scales in
    ``proj.scale``, ``weights.scale``) run inference the same way."""
    xg, x2, w_ih, per, w_scale = proj
    lengths, reverse = seq
    T = xg.shape[0]
    B = hbuf.shape[1]
    H = hbuf.shape[2]
    G = xg.shape[2] // H
    P = units.size - 1
    keep = saved.acts.shape[0] == T
    xg2 = xg.reshape((T * B, G * H))
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
                    rows = x2[lo * B:(lo + n) * B]
                    act, act_scale = product_input(rows, w_ih)  # (float weights: rows)
                    for q in range(q0, q1):
                        for g in range(G):
                            scaled_product(act, act_scale, w_ih, w_scale, g * H + units[q],
                                           g * H + units[q + 1], xg2[lo * B:(lo + n) * B])
                for q in range(q0, q1):
                    _units_step(cell, t, ts, q, units[q], units[q + 1], xg, weights, bias,
                                cur, nxt, c, hg, lengths, y, saved)
                if meet:
                    barrier(sync, P, s + 1)
        restore(fpu)


@jit()
def forward_loop_serial(cell, xg, weights, bias, hbuf, c, hg, seq, units, y, saved):
    """:func:`forward_loop_split` with every unit block on the calling thread and no
    parallel region: for a call too small to share (a step of generation), where starting
    even a one-thread region, and narrowing Numba's thread setting for it, costs a good part
    of the step. The caller flushes denormals."""
    lengths, reverse = seq
    T = xg.shape[0]
    keep = saved.acts.shape[0] == T
    for s in range(T):
        t = T - 1 - s if reverse else s
        ts = t if keep else 0
        cur, nxt = hbuf[s % 2], hbuf[1 - s % 2]
        for q in range(units.size - 1):
            _units_step(cell, t, ts, q, units[q], units[q + 1], xg, weights, bias, cur, nxt,
                        c, hg, lengths, y, saved)


@jit()
def forward_rows(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, lengths, reverse, units,
                 y, h_n, c_n, acts, h_prev, c_all, hn_all, hg):
    """A whole one-thread call of a few rows (a step of generation): the input projection
    with the row-dot kernel, then :func:`forward_loop_serial` over the unit blocks
    ``units`` (one, as a rule) on ``w_hh`` as it is.

    Plain arrays in, nothing out: typing named tuples and boxing returned arrays at the
    call would cost a good part of a step, so the caller allocates the outputs (``y
    [T,B,H]``, ``h_n``, ``c_n [B,H]``), the arrays of :class:`.Saved` (``acts``,
    ``h_prev``, ``c_all``, ``hn_all``) and ``hg [B,G*H]``, scratch for the recurrent
    products. ``x [T,B,I]`` C-contiguous; ``c0`` zeros for the cells without a cell state;
    ``lengths [B]``, or empty when every row has ``T`` steps; ``peep``: as in
    :class:`.Biases`.

    A one-step call whose products BLAS computed (the ``"step"`` plan) passes ``w_ih`` and
    ``w_hh`` with no rows, ``x [1,B,G*H]`` the input projection and ``hg`` the recurrent
    one."""
    T, B, I = x.shape
    GH = hg.shape[1]
    H = w_hh.shape[1]
    dt = x.dtype
    if w_ih.shape[0] == 0:
        xg = x
    else:
        xg = np.empty((T, B, GH), dt)
        matvec(x.reshape((T * B, I)), ROW0, T * B, w_ih, ROW0, GH, xg.reshape((T * B, GH)))
    lens = lengths
    if lengths.size == 0:
        lens = np.empty(B, np.int64)
        for b in range(B):
            lens[b] = T
    hbuf = np.empty((2, B, H), dt)
    for b in range(B):
        copy(hbuf[0, b], h0[b])
        copy(c_n[b], c0[b])
    forward_loop_serial(cell, xg, UnitWeights(w_hh, np.empty((0, 1, 1), dt),
                                              np.zeros(1, np.int64), np.empty(0, dt)),
                        Biases(b_ih, b_hh, b_ih + b_hh, peep), hbuf, c_n, hg,
                        Sequence(lens, reverse), units, y, Saved(acts, h_prev, c_all, hn_all))
    for b in range(B):
        copy(h_n[b], hbuf[T % 2, b])


@jit()
def _units_grad(cell, t, first, tp, u0, u1, dy, dh, dc, c0, lengths, saved, grads, direct,
                tc, db, peep):
    """The gate gradients of step ``t`` for hidden units ``[u0, u1)`` of every row, added
    into the sums ``db [G*H + 3*H]`` at these units' columns."""
    B = dh.shape[0]
    H = dh.shape[1]
    dgx, dgh = grads.dgx, grads.dgh
    G = dgh.shape[2] // H
    n = u1 - u0
    lstm = has_cell_state(cell)
    tl = t if lstm else 0  # (c_all, hn_all: one-step scratch for the other cells)
    tn = t if cell == GRU else 0
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
        cp = c0[b, u0:u1] if first or not lstm else saved.c_all[tp, b, u0:u1]
        backward_step(cell, u0, n, H, dhb, saved.acts[t, b], saved.c_all[tl, b, u0:u1], cp,
                      dc[b, u0:u1], saved.h_prev[t, b, u0:u1], saved.hn_all[tn, b, u0:u1],
                      gx, gh, direct[b, u0:u1], tc, db, peep)


@jit(parallel=True)
def backward_loop_split(cell, weights, dy, dh, dc, c0, seq, units, sync, saved, grads, dhp,
                        direct, peep):
    """Same results as :func:`._loops.backward_loop`. ``dh``, ``dc`` hold ``dh_n``,
    ``dc_n`` and end as ``dh0``, ``dc0``; ``weights.packed``/``starts``: column block ``q``
    of ``w_hh`` (unit block ``q``) packed by :func:`._gemm.pack_column_blocks`, or, when
    ``packed`` is empty, ``weights.w_hh`` read as it is (:func:`._gemm.vecmat`: one step
    of one or two rows), or, when ``weights.w_hh`` has no rows either, not at all: a
    one-step call whose caller computes ``dh0 = dgh[0] @ w_hh + direct`` (for the rows
    with a step) by BLAS; ``dhp`` is scratch for the products (``[B,H]`` unpacked),
    ``direct [B,H]`` zeroed scratch (the GRU's ``z * dh``); ``grads.db [1, G*H + 3*H]``
    (zeroed) receives the sums (each thread adds only its units' columns); ``peep``: the
    peephole weights (:class:`.Biases`)."""
    lengths, reverse = seq
    wp, starts = weights.packed, weights.starts
    dgh = grads.dgh
    T = dgh.shape[0]
    B = dh.shape[0]
    P = units.size - 1
    NR = wp.shape[2]
    rowdot = wp.shape[0] == 0
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
                                lengths, saved, grads, direct, tc, grads.db[0], peep)
                if meet:
                    barrier(sync, P, s + 1)  # every unit's gate gradients are in dgh[t]
                for q in range(q0, q1):
                    if weights.w_hh.shape[0] == 0:
                        break  # (one step: the caller computes dh from dgh by BLAS)
                    u0 = units[q]
                    if rowdot:
                        vecmat(dgh[t], ROW0, B, weights.w_hh, u0, units[q + 1], dhp)
                        col = u0
                    else:
                        gemm_panels(dgh[t], ROW0, B, wp, starts[q], starts[q + 1], dhp, t)
                        col = starts[q] * NR
                    for b in range(B):
                        if t < lengths[b]:
                            for j in range(units[q + 1] - u0):
                                dh[b, u0 + j] = dhp[b, col + j] + direct[b, u0 + j]
        restore(fpu)
