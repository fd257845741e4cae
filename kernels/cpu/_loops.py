"""The compiled time loops of the CPU backend: one call runs every step of one layer.

Parallelism is over batch rows: sequences are independent, so each thread takes a block of
rows and walks all ``T`` steps for them with no synchronisation until the end (one fork and
join per call, never one per step). Per step and row block: one register-tiled recurrent
matmul, then the fused pointwise work over the gates, written as a few short loops that
each touch at most four arrays: more arrays per loop exceed LLVM's budget of run-time alias
checks and the loop stays scalar.

Shapes (DESIGN.md legend): ``xg [T,B,G*H]`` (input projection plus ``b_ih``), states
``[B,H]``; ``w_packed`` is ``w_hh.T`` (forward) or ``w_hh`` (backward) in the panels of
:func:`._gemm.pack`.
"""

import numpy as np
from numba import prange

from ._fpu import flush_denormals, restore
from ._gemm import gemm_packed
from ._jit import jit, wide_vectors
from ._math import GRU, LSTM, copy, rnn_activation, rnn_activation_grad, sigmoid, tanh

# float32 literals: a Python float in a float32 loop would promote it to float64. In float64
# kernels they widen exactly.
ONE = np.float32(1)
ZERO = np.float32(0)



@jit(parallel=True)
def forward_loop(cell, xg, x, wx_packed, per, b_ih, b_gates, w_packed, b_hh, h0, c0,
                 lengths, reverse, chunks, y, h_n, c_n, acts, h_prev, c_all, hn_all):
    """Run the recurrence. ``acts``, ``h_prev``, ``c_all``, ``hn_all`` receive what backward
    needs; when not training they are one-step scratch arrays (``[1,B,*]``) and step 0 is
    overwritten each time, which keeps the loop free of branches on ``training``.

    The input projection (without bias) is either given (``xg``) or, when ``xg`` is empty,
    computed in the loop from ``x`` and ``wx_packed`` (``w_ih.T`` packed) for the thread's
    own rows: it then never leaves the core's cache. It is one product every ``per``
    steps, over those steps' rows copied together (see ``_projection_steps`` in the
    package). The biases enter in the gate passes: ``b_gates = b_ih + b_hh``, except
    the GRU's ``n``, which takes ``b_in`` outside and ``b_hn`` inside ``r * (.)``."""
    T, B, H = y.shape
    P, _, NR = w_packed.shape
    fused = xg.shape[0] == 0
    keep = acts.shape[0] == T
    for ci in prange(chunks.size - 1):
        wide_vectors()
        fpu = flush_denormals()
        r0, r1 = chunks[ci], chunks[ci + 1]
        h = h0.copy()  # each thread reads and writes only its rows
        c = c0.copy()
        hg = np.empty((B, P * NR), y.dtype)
        # the projection of the next few steps: their rows copied together (xa), then one
        # product over all of them, with full row tiles
        nr = r1 - r0
        xa = np.empty((per * nr if fused else 0, x.shape[2]), y.dtype)
        xs = np.empty((per * nr if fused else 0, wx_packed.shape[0] * NR), y.dtype)
        for s in range(T):
            t = T - 1 - s if reverse else s
            ts = t if keep else 0
            if keep:  # (not when inferring: nothing reads it)
                for b in range(r0, r1):
                    copy(h_prev[ts, b], h[b])
            k = s % per
            if fused and k == 0:
                steps = min(per, T - s)
                for kk in range(steps):
                    tk = T - 1 - s - kk if reverse else s + kk
                    for b in range(nr):
                        copy(xa[kk * nr + b], x[tk, r0 + b])
                gemm_packed(xa, 0, steps * nr, wx_packed, xs, s // per)
            gemm_packed(h, r0, r1, w_packed, hg, s)
            for b in range(r0, r1):
                if t >= lengths[b]:
                    for j in range(H):  # (explicit loops: Numba miscompiles a
                        y[t, b, j] = ZERO  # slice fill inside prange)
                    if cell == LSTM:
                        copy(c_all[ts, b], c[b])
                    continue
                # Activations go straight into acts (scratch when not training): one
                # pass per gate block, each reading the recurrent product, the input
                # projection and the bias.
                xr = xs[k * nr + b - r0] if fused else xg[t, b]
                gr, hb, ar = hg[b], h[b], acts[ts, b]
                if cell == LSTM:
                    cb = c[b]
                    for j in range(2 * H):  # i, f
                        ar[j] = sigmoid(gr[j] + xr[j] + b_gates[j])
                    # (loops from 0 with offset indices: a range starting at 2*H keeps
                    # Numba's negative-index wraparound check in the loop)
                    g0, o0 = 2 * H, 3 * H
                    for j in range(H):  # g
                        ar[g0 + j] = tanh(gr[g0 + j] + xr[g0 + j] + b_gates[g0 + j])
                    for j in range(H):  # o
                        ar[o0 + j] = sigmoid(gr[o0 + j] + xr[o0 + j] + b_gates[o0 + j])
                    for j in range(H):
                        cb[j] = ar[H + j] * cb[j] + ar[j] * ar[2 * H + j]
                    for j in range(H):
                        hb[j] = ar[3 * H + j] * tanh(cb[j])
                    copy(c_all[ts, b], cb)
                elif cell == GRU:
                    hn = hn_all[ts, b]
                    for j in range(2 * H):  # r, z
                        ar[j] = sigmoid(gr[j] + xr[j] + b_gates[j])
                    for j in range(H):  # W_hn h + b_hn, kept for backward
                        hn[j] = gr[2 * H + j] + b_hh[2 * H + j]
                    for j in range(H):  # n
                        ar[2 * H + j] = tanh(xr[2 * H + j] + b_ih[2 * H + j] + ar[j] * hn[j])
                    for j in range(H):
                        hb[j] = ar[2 * H + j] + ar[H + j] * (hb[j] - ar[2 * H + j])
                else:
                    for j in range(H):
                        ar[j] = rnn_activation(cell, gr[j] + xr[j] + b_gates[j])
                    copy(hb, ar)
                copy(y[t, b], hb)
        for b in range(r0, r1):
            h_n[b, :] = h[b, :]
            c_n[b, :] = c[b, :]
        restore(fpu)


@jit(parallel=True)
def backward_loop(cell, w_packed, dy, dh_n, dc_n, c0, lengths, reverse, chunks,
                  acts, h_prev, c_all, hn_all, dgx, dgh, dh0, dc0, db):
    """Walk the steps in reverse processing order. Writes the pre-activation gradients
    ``dgx`` (input side) and ``dgh`` (recurrent side; the same array as ``dgx`` except for
    the GRU) for every step, and the gradients of the initial states.

    ``db [chunks, G*H + H]`` (zeroed) receives each row block's sums of ``dgx`` over steps
    and rows (the bias gradient), then for the GRU those of ``dgh``'s ``n`` block: summed
    here while the values are in L1, instead of reading them back from memory after the
    loop."""
    T, B, GH = dgh.shape
    H = dh_n.shape[1]
    P, _, NR = w_packed.shape
    for ci in prange(chunks.size - 1):
        wide_vectors()
        fpu = flush_denormals()
        r0, r1 = chunks[ci], chunks[ci + 1]
        dh = dh_n.copy()
        dc = dc_n.copy()
        direct = np.zeros((B, H), dgh.dtype)  # the GRU's z * dh path to h_prev
        dhp = np.empty((B, P * NR), dgh.dtype)
        tc = np.empty(H, dgh.dtype)
        dbx, dbn = db[ci, :GH], db[ci, GH:]
        for s in range(T):
            t = s if reverse else T - 1 - s
            first = t == (T - 1 if reverse else 0)
            tp = t + 1 if reverse else t - 1
            for b in range(r0, r1):
                ar, gx, gh, dhb = acts[t, b], dgx[t, b], dgh[t, b], dh[b]
                if t >= lengths[b]:
                    for j in range(GH):  # padding: no gate gradient; the state's
                        gx[j] = ZERO     # passes through unchanged
                        gh[j] = ZERO
                    continue
                dyb = dy[t, b]
                for j in range(H):  # (a plain loop: the array expression was slower)
                    dhb[j] += dyb[j]  # now the total gradient reaching this step's h
                if cell == LSTM:
                    dcb, cr = dc[b], c_all[t, b]
                    cp = c0[b] if first else c_all[tp, b]
                    for j in range(H):
                        tc[j] = tanh(cr[j])
                    for j in range(H):
                        dcb[j] += dhb[j] * ar[3 * H + j] * (ONE - tc[j] * tc[j])
                    for j in range(H):
                        gh[j] = dcb[j] * ar[2 * H + j] * ar[j] * (ONE - ar[j])
                    for j in range(H):
                        gh[H + j] = dcb[j] * cp[j] * ar[H + j] * (ONE - ar[H + j])
                    for j in range(H):
                        g = ar[2 * H + j]
                        gh[2 * H + j] = dcb[j] * ar[j] * (ONE - g * g)
                    for j in range(H):
                        o = ar[3 * H + j]
                        gh[3 * H + j] = dhb[j] * tc[j] * o * (ONE - o)
                    for j in range(H):
                        dcb[j] *= ar[H + j]
                elif cell == GRU:
                    hp, hnr = h_prev[t, b], hn_all[t, b]
                    for j in range(H):
                        n = ar[2 * H + j]
                        gx[2 * H + j] = dhb[j] * (ONE - ar[H + j]) * (ONE - n * n)
                    for j in range(H):
                        gx[j] = gx[2 * H + j] * hnr[j] * ar[j] * (ONE - ar[j])
                    for j in range(H):
                        z = ar[H + j]
                        gx[H + j] = dhb[j] * (hp[j] - ar[2 * H + j]) * z * (ONE - z)
                    copy(gh[:2 * H], gx[:2 * H])
                    for j in range(H):
                        gh[2 * H + j] = gx[2 * H + j] * ar[j]
                    for j in range(H):
                        direct[b, j] = dhb[j] * ar[H + j]
                    for j in range(H):
                        dbn[j] += gh[2 * H + j]
                else:
                    for j in range(H):
                        gh[j] = rnn_activation_grad(cell, dhb[j], ar[j])
                for j in range(GH):
                    dbx[j] += gx[j]
            gemm_packed(dgh[t], r0, r1, w_packed, dhp, s)
            for b in range(r0, r1):
                if t < lengths[b]:
                    for j in range(H):
                        dh[b, j] = dhp[b, j] + direct[b, j]
        for b in range(r0, r1):
            dh0[b, :] = dh[b, :]
            dc0[b, :] = dc[b, :]
        restore(fpu)
