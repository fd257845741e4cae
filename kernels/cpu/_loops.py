"""The compiled time loops of the CPU backend: one call runs every step of one layer.

Parallelism is over batch rows: sequences are independent, so each thread takes a block of
rows and walks all ``T`` steps for them with no synchronisation until the end (one fork and
join per call, never one per step). Per step and row block: one register-blocked recurrent
matmul, then one fused pass over the gates.

Shapes (DESIGN.md legend): ``xg [T,B,G*H]`` (input projection plus ``b_ih``), ``w_hh
[G*H,H]``, ``w_hh_t [H,G*H]`` (its transpose, contiguous), states ``[B,H]``.
"""

import numpy as np
from numba import prange

from ._jit import jit
from ._math import matmul_nt, sigmoid, tanh

RNN_TANH, RNN_RELU, RNN_SIGMOID, LSTM, GRU = 0, 1, 2, 3, 4
CELL_IDS = {"rnn_tanh": RNN_TANH, "rnn_relu": RNN_RELU, "rnn_sigmoid": RNN_SIGMOID,
            "lstm": LSTM, "gru": GRU}


@jit(parallel=True)
def forward_loop(cell, xg, w_hh, b_hh, h0, c0, lengths, reverse, chunks,
                 y, h_n, c_n, acts, h_prev, c_all, hn_all):
    """Run the recurrence. ``acts``, ``h_prev``, ``c_all``, ``hn_all`` receive what backward
    needs; when not training they are one-step scratch arrays (``[1,B,*]``) and step 0 is
    overwritten each time, which keeps the loop free of branches on ``training``."""
    T, B, GH = xg.shape
    H = w_hh.shape[1]
    keep = acts.shape[0] == T
    for ci in prange(chunks.size - 1):
        r0, r1 = chunks[ci], chunks[ci + 1]
        h = h0.copy()  # each thread reads and writes only its rows
        c = c0.copy()
        hg = np.empty((B, GH), xg.dtype)
        for s in range(T):
            t = T - 1 - s if reverse else s
            ts = t if keep else 0
            for b in range(r0, r1):
                h_prev[ts, b, :] = h[b, :]
            matmul_nt(h, r0, r1, w_hh, hg)
            for b in range(r0, r1):
                if t >= lengths[b]:
                    y[t, b, :] = 0
                    if cell == LSTM:
                        c_all[ts, b, :] = c[b, :]
                    continue
                xr, gr, ar = xg[t, b], hg[b], acts[ts, b]
                if cell == LSTM:
                    for j in range(H):
                        i = sigmoid(xr[j] + gr[j] + b_hh[j])
                        f = sigmoid(xr[H + j] + gr[H + j] + b_hh[H + j])
                        g = tanh(xr[2 * H + j] + gr[2 * H + j] + b_hh[2 * H + j])
                        o = sigmoid(xr[3 * H + j] + gr[3 * H + j] + b_hh[3 * H + j])
                        cn = f * c[b, j] + i * g
                        hv = o * tanh(cn)
                        c[b, j] = cn
                        h[b, j] = hv
                        y[t, b, j] = hv
                        ar[j], ar[H + j], ar[2 * H + j], ar[3 * H + j] = i, f, g, o
                        c_all[ts, b, j] = cn
                elif cell == GRU:
                    for j in range(H):
                        r = sigmoid(xr[j] + gr[j] + b_hh[j])
                        z = sigmoid(xr[H + j] + gr[H + j] + b_hh[H + j])
                        hn = gr[2 * H + j] + b_hh[2 * H + j]
                        n = tanh(xr[2 * H + j] + r * hn)
                        hv = n + z * (h[b, j] - n)
                        h[b, j] = hv
                        y[t, b, j] = hv
                        ar[j], ar[H + j], ar[2 * H + j] = r, z, n
                        hn_all[ts, b, j] = hn
                elif cell == RNN_TANH:
                    for j in range(H):
                        hv = tanh(xr[j] + gr[j] + b_hh[j])
                        h[b, j] = hv
                        y[t, b, j] = hv
                        ar[j] = hv
                elif cell == RNN_RELU:
                    for j in range(H):
                        hv = max(xr[j] + gr[j] + b_hh[j], 0)
                        h[b, j] = hv
                        y[t, b, j] = hv
                        ar[j] = hv
                else:
                    for j in range(H):
                        hv = sigmoid(xr[j] + gr[j] + b_hh[j])
                        h[b, j] = hv
                        y[t, b, j] = hv
                        ar[j] = hv
        for b in range(r0, r1):
            h_n[b, :] = h[b, :]
            c_n[b, :] = c[b, :]


@jit(parallel=True)
def backward_loop(cell, w_hh_t, dy, dh_n, dc_n, c0, lengths, reverse, chunks,
                  acts, h_prev, c_all, hn_all, dgx, dgh, dh0, dc0):
    """Walk the steps in reverse processing order. Writes the pre-activation gradients
    ``dgx`` (input side) and ``dgh`` (recurrent side; the same array as ``dgx`` except for
    the GRU) for every step, and the gradients of the initial states."""
    T, B, GH = dgh.shape
    H = w_hh_t.shape[0]
    for ci in prange(chunks.size - 1):
        r0, r1 = chunks[ci], chunks[ci + 1]
        dh = dh_n.copy()
        dc = dc_n.copy()
        direct = np.zeros((B, H), dgh.dtype)  # the GRU's z * dh path to h_prev
        dhp = np.empty((B, H), dgh.dtype)
        for s in range(T):
            t = s if reverse else T - 1 - s
            first = t == (T - 1 if reverse else 0)
            tp = t + 1 if reverse else t - 1
            for b in range(r0, r1):
                if t >= lengths[b]:
                    continue  # padding: state and its gradient pass through unchanged
                ar, dyr, gx, gh = acts[t, b], dy[t, b], dgx[t, b], dgh[t, b]
                if cell == LSTM:
                    cp = c0[b] if first else c_all[tp, b]
                    cr = c_all[t, b]
                    for j in range(H):
                        i, f, g, o = ar[j], ar[H + j], ar[2 * H + j], ar[3 * H + j]
                        tc = tanh(cr[j])
                        dht = dh[b, j] + dyr[j]
                        dct = dc[b, j] + dht * o * (1 - tc * tc)
                        gh[j] = dct * g * i * (1 - i)
                        gh[H + j] = dct * cp[j] * f * (1 - f)
                        gh[2 * H + j] = dct * i * (1 - g * g)
                        gh[3 * H + j] = dht * tc * o * (1 - o)
                        dc[b, j] = dct * f
                elif cell == GRU:
                    hp, hnr = h_prev[t, b], hn_all[t, b]
                    for j in range(H):
                        r, z, n = ar[j], ar[H + j], ar[2 * H + j]
                        dht = dh[b, j] + dyr[j]
                        dn = dht * (1 - z) * (1 - n * n)
                        dr = dn * hnr[j] * r * (1 - r)
                        dz = dht * (hp[j] - n) * z * (1 - z)
                        gx[j], gx[H + j], gx[2 * H + j] = dr, dz, dn
                        gh[j], gh[H + j], gh[2 * H + j] = dr, dz, dn * r
                        direct[b, j] = dht * z
                elif cell == RNN_TANH:
                    for j in range(H):
                        gh[j] = (dh[b, j] + dyr[j]) * (1 - ar[j] * ar[j])
                elif cell == RNN_RELU:
                    for j in range(H):
                        gh[j] = (dh[b, j] + dyr[j]) if ar[j] > 0 else 0
                else:
                    for j in range(H):
                        gh[j] = (dh[b, j] + dyr[j]) * ar[j] * (1 - ar[j])
            matmul_nt(dgh[t], r0, r1, w_hh_t, dhp)
            for b in range(r0, r1):
                if t < lengths[b]:
                    for j in range(H):
                        dh[b, j] = dhp[b, j] + direct[b, j]
        for b in range(r0, r1):
            dh0[b, :] = dh[b, :]
            dc0[b, :] = dc[b, :]
