"""The compiled time loops of the CPU backend that split the batch: one call runs every step
of one layer.

Parallelism is over batch rows: sequences are independent, so each thread takes a block of
rows and walks all ``T`` steps for them with no synchronisation until the end (one fork and
join per call, never one per step). Per step and row block: one register-tiled recurrent
matmul, then the cell's pointwise step (:mod:`._cells`) for each row.

Shapes (docs/architecture.md legend): ``xg [T,B,G*H]`` (input projection, without bias), states
``[B,H]``; ``w_packed`` is ``w_hh.T`` (forward) or ``w_hh`` (backward) in the panels of
:func:`._gemm.pack`. Argument groups: :mod:`._args`.
"""

import numpy as np
from numba import prange

from ._cells import backward_first, backward_step, forward_first, forward_step
from ._fpu import flush_denormals, restore
from ._gemm import PAIR_COLUMNS, gemm_packed
from ._jit import jit, wide_vectors
from ._lowp import scaled_panels
from ._math import GRU, GRU_RB, ROW0, copy, has_cell_state

ZERO = np.float32(0)  # unifies with float64 in float64 kernels


@jit(parallel=True)
def forward_loop(cell, proj, w_packed, gate_at, second, bias, h0, c0, seq, chunks, out,
                 saved, wr_packed, w_scale):
    """Run the recurrence over the row blocks ``chunks [threads+1]``; ``out``: :class:`Outputs`
    (``h_n``, ``c_n`` written at the end), ``saved``: :class:`Saved`. The recurrent product
    of gate ``g`` starts at column ``gate_at[g]`` of a step's product; for
    ``gru_reset_before`` the panels from ``second`` on (the ``n`` gate's) multiply ``r * h``
    in a second product, the others ``h``. An LSTM with a projection (``wr_packed``:
    ``w_hr.T`` packed; empty without) writes ``o * tanh c'`` into ``saved.hn_all`` and
    takes the state ``h' [S]`` from a product with it; states ``h0 [B,S]``, ``c0 [B,H]``.

    ``proj = (xg, x, w_packed, per)``: the input projection is either given (``xg``) or,
    when ``xg`` is empty, computed in the loop from ``x`` and ``w_packed`` (``w_ih.T``
    packed) for the thread's own rows, where it never leaves the core's cache: one product
    every ``per`` steps, over those steps' rows copied together.

    Quantized inference: ``w_packed`` (and ``proj.w``) may be int8 panels of
    :func:`._gemm.pack_pairs`, with their rows' scales in column order in ``w_scale`` (and
    ``proj.scale``); empty for float panels (:func:`._lowp.scaled_panels`)."""
    xg, x, wx_packed, per, wx_scale = proj
    y, h_n, c_n = out
    lengths, reverse = seq
    T, B, S = y.shape  # S: the state's size (H, or the projection's)
    H = c0.shape[1]
    P, _, NR = w_packed.shape
    NR = PAIR_COLUMNS if w_packed.itemsize == 1 else NR  # (columns a panel)
    NX = PAIR_COLUMNS if wx_packed.itemsize == 1 else wx_packed.shape[2]
    fused = xg.shape[0] == 0
    keep = saved.acts.shape[0] == T
    projected = wr_packed.shape[0] > 0
    for ci in prange(chunks.size - 1):
        wide_vectors()
        fpu = flush_denormals()
        r0, r1 = chunks[ci], chunks[ci + 1]
        h = h0.copy()  # each thread reads and writes only its rows
        c = c0.copy()
        hg = np.empty((B, P * NR), y.dtype)
        hr = np.empty((B, wr_packed.shape[0] * wr_packed.shape[2]), y.dtype)  # (w_hr's)
        nr = r1 - r0
        xa = np.empty((per * nr if fused else 0, x.shape[2]), y.dtype)
        xs = np.empty((per * nr if fused else 0, wx_packed.shape[0] * NX), y.dtype)
        for s in range(T):
            t = T - 1 - s if reverse else s
            ts = t if keep else 0
            if keep:  # (not when inferring: nothing reads it)
                for b in range(r0, r1):
                    copy(saved.h_prev[ts, b], h[b])
            k = s % per
            if fused and k == 0:
                steps = min(per, T - s)
                for kk in range(steps):
                    tk = T - 1 - s - kk if reverse else s + kk
                    for b in range(nr):
                        copy(xa[kk * nr + b], x[tk, r0 + b])
                scaled_panels(xa, ROW0, steps * nr, wx_packed, ROW0, wx_packed.shape[0], xs,
                              s // per, wx_scale)
            if cell == GRU_RB:
                scaled_panels(h, r0, r1, w_packed, ROW0, second, hg, s, w_scale)
                rh = saved.hn_all[ts]  # r * h, the second product's input
                for b in range(r0, r1):
                    if t >= lengths[b]:
                        for j in range(H):
                            rh[b, j] = ZERO
                        continue
                    xr = xs[k * nr + b - r0] if fused else xg[t, b]
                    forward_first(ROW0, H, H, hg[b], gate_at, xr, bias, h[b], saved.acts[ts, b],
                                  rh[b])
                scaled_panels(rh, r0, r1, w_packed, second, P, hg, s, w_scale)
            else:
                scaled_panels(h, r0, r1, w_packed, ROW0, P, hg, s, w_scale)
            mo = saved.hn_all[ts]  # (with a projection: o * tanh c')
            for b in range(r0, r1):
                if t >= lengths[b]:
                    for j in range(S):  # (explicit loops: Numba miscompiles a
                        y[t, b, j] = ZERO  # slice fill inside prange)
                    if has_cell_state(cell):
                        copy(saved.c_all[ts, b], c[b])
                    if projected:  # (the projection's weight gradient reads it)
                        for j in range(H):
                            mo[b, j] = ZERO
                    continue
                xr = xs[k * nr + b - r0] if fused else xg[t, b]
                forward_step(cell, ROW0, H, H, hg[b], gate_at, xr, bias, h[b],
                             mo[b] if projected else h[b], c[b], saved.acts[ts, b],
                             saved.hn_all[ts if cell == GRU else 0, b])
                if has_cell_state(cell):
                    copy(saved.c_all[ts, b], c[b])
                if not projected:
                    copy(y[t, b], h[b])
            if projected:  # h' = o * tanh c' @ w_hr.T
                gemm_packed(mo, r0, r1, wr_packed, hr, s)
                for b in range(r0, r1):
                    if t < lengths[b]:
                        for j in range(S):
                            h[b, j] = hr[b, j]
                        copy(y[t, b], h[b])
        for b in range(r0, r1):
            h_n[b, :] = h[b, :]
            c_n[b, :] = c[b, :]
        restore(fpu)


@jit(parallel=True)
def backward_loop(cell, w_packed, w_n_packed, dy, dh_n, dc_n, c0, seq, chunks, saved, grads,
                  peep, wr_packed):
    """Walk the steps in reverse processing order; ``grads``: :class:`Grads`, whose ``db``
    has a row per row block (zeroed), summed here while the values are in L1. For
    ``gru_reset_before``, ``w_n_packed`` holds ``W_hn`` (:func:`._gemm.pack`, not
    transposed) for the step's first product, ``d(r*h) = dn @ W_hn``; ``peep``: the
    peephole weights (:class:`.Biases`). With a projection (``wr_packed``: ``w_hr``
    packed, not transposed; empty without), ``grads.dhs`` receives each step's state
    gradient and the pointwise step takes ``dh @ w_hr``; ``dh_n [B,S]``, ``dc_n [B,H]``."""
    lengths, reverse = seq
    dgx, dgh, dh0, dc0, db, dhs = grads
    acts, h_prev, c_all, hn_all = saved
    T, B, GH = dgh.shape
    S, H = dh_n.shape[1], dc_n.shape[1]
    P, _, NR = w_packed.shape
    projected = wr_packed.shape[0] > 0
    for ci in prange(chunks.size - 1):
        wide_vectors()
        fpu = flush_denormals()
        r0, r1 = chunks[ci], chunks[ci + 1]
        dh = dh_n.copy()
        dc = dc_n.copy()
        direct = np.zeros((B, H), dgh.dtype)  # the GRU's z * dh path to h_prev
        dhp = np.empty((B, P * NR), dgh.dtype)
        dm = np.empty((B if projected else 0, wr_packed.shape[0] * NR), dgh.dtype)
        tc = np.empty(H, dgh.dtype)
        rb = cell == GRU_RB
        dn = np.zeros((B if rb else 0, H), dgh.dtype)
        drh = np.zeros((B if rb else 0, w_n_packed.shape[0] * NR), dgh.dtype)
        for s in range(T):
            t = s if reverse else T - 1 - s
            first = t == (T - 1 if reverse else 0)
            tp = t + 1 if reverse else t - 1
            for b in range(r0, r1):
                gx, gh, dhb = dgx[t, b], dgh[t, b], dh[b]
                if t >= lengths[b]:
                    for j in range(GH):  # padding: no gate gradient; the state's
                        gx[j] = ZERO     # passes through unchanged
                        gh[j] = ZERO
                    if projected:
                        for j in range(S):
                            dhs[t, b, j] = ZERO
                    continue
                dyb = dy[t, b]
                for j in range(S):
                    dhb[j] += dyb[j]  # now the total gradient reaching this step's h
                if rb:
                    backward_first(ROW0, H, H, dhb, acts[t, b], gx, gh, dn[b])
                elif projected:
                    copy(dhs[t, b], dhb)
            # the step's first product, where the cell has one: gru_reset_before's d(r*h) =
            # dn @ W_hn, a projected LSTM's gradient reaching o * tanh c', dh @ w_hr
            if rb:
                gemm_packed(dn, r0, r1, w_n_packed, drh, s)
            elif projected:
                gemm_packed(dh, r0, r1, wr_packed, dm, s)
            lstm = has_cell_state(cell)
            tl = t if lstm else 0          # (c_all, hn_all: one-step scratch
            tn = t if cell == GRU else 0   # for the other cells)
            for b in range(r0, r1):
                if t < lengths[b]:
                    cp = c0[b] if first or not lstm else c_all[tp, b]
                    backward_step(cell, ROW0, H, H, dm[b] if projected else dh[b], acts[t, b],
                                  c_all[tl, b], cp, dc[b], h_prev[t, b],
                                  drh[b] if rb else hn_all[tn, b], dgx[t, b], dgh[t, b],
                                  direct[b], tc, db[ci], peep)
            gemm_packed(dgh[t], r0, r1, w_packed, dhp, s)
            for b in range(r0, r1):
                if t < lengths[b]:
                    for j in range(S):
                        dh[b, j] = dhp[b, j] + direct[b, j]
        for b in range(r0, r1):
            dh0[b, :] = dh[b, :]
            dc0[b, :] = dc[b, :]
        restore(fpu)
