// Cell math for the CUDA kernels: ids, gate counts, overflow-safe activations and each
// cell's pointwise step, forward and backward, written once. Equations and gate order:
// kernels/cells.py (PyTorch's and cuDNN's).
#pragma once

namespace fastrnn {

// Ids and gate counts come from kernels/cells.py, through the generated cell_ids.cuh.
#include "cell_ids.cuh"

enum Cell {
    RNN_TANH = FASTRNN_ID_RNN_TANH,
    RNN_RELU = FASTRNN_ID_RNN_RELU,
    RNN_SIGMOID = FASTRNN_ID_RNN_SIGMOID,
    LSTM = FASTRNN_ID_LSTM,
    GRU = FASTRNN_ID_GRU,
    GRU_RB = FASTRNN_ID_GRU_RESET_BEFORE,
    LSTM_P = FASTRNN_ID_LSTM_PEEPHOLE,
};
static_assert(FASTRNN_NUM_CELLS == 7, "kernels/cells.py has a cell these kernels lack");

template <int CELL>
struct Gates {
    static constexpr int G = CELL == LSTM          ? FASTRNN_GATES_LSTM
                             : CELL == LSTM_P      ? FASTRNN_GATES_LSTM_PEEPHOLE
                             : CELL == GRU         ? FASTRNN_GATES_GRU
                             : CELL == GRU_RB      ? FASTRNN_GATES_GRU_RESET_BEFORE
                             : CELL == RNN_TANH    ? FASTRNN_GATES_RNN_TANH
                             : CELL == RNN_RELU    ? FASTRNN_GATES_RNN_RELU
                                                   : FASTRNN_GATES_RNN_SIGMOID;
};

// exp only ever sees -|x|, so inputs of +-1e4 give finite results.
template <typename T>
__device__ __forceinline__ T sigmoid(T x) {
    const T e = exp(-fabs(x));
    const T r = e / (T(1) + e);  // sigmoid(-|x|)
    return x >= T(0) ? T(1) - r : r;
}

template <typename T>
__device__ __forceinline__ T relu(T x) {
    return x > T(0) ? x : T(0);
}

// The vanilla cells' activation, and its derivative written in terms of its output y.
template <int CELL, typename T>
__device__ __forceinline__ T activate(T x) {
    if (CELL == RNN_TANH) return tanh(x);
    if (CELL == RNN_RELU) return relu(x);
    return sigmoid(x);
}

template <int CELL, typename T>
__device__ __forceinline__ T activation_grad(T y) {
    if (CELL == RNN_TANH) return T(1) - y * y;
    if (CELL == RNN_RELU) return y > T(0) ? T(1) : T(0);
    return y * (T(1) - y);
}

// The pointwise steps. xr: the row's input projection (b_ih included) [G*H]; hg: the
// step's recurrent products (b_hh included) as [G*H, B]; unit u of batch row b.
template <typename T>
__device__ __forceinline__ T product(const T* hg, int row, int b, int B) {
    return hg[(size_t)row * B + b];
}

// The GRU_RB reset gate, for r * h before the second product.
template <typename T>
__device__ __forceinline__ T gru_reset(const T* xr, const T* hg, int u, int b, int B, int H) {
    return sigmoid(xr[u] + product(hg, u, b, B));
}

// Whether the cell carries a cell state (the LSTMs).
template <int CELL>
struct HasC {
    static constexpr bool value = CELL == LSTM || CELL == LSTM_P;
};

// Forward: returns h'; ar receives the gates (training); cn the LSTM's c' and on its output
// gate, hn the GRU's W_hn h + b_hn; peep: LSTM_P's peephole weights [3,H] (rows i, f, o).
template <int CELL, bool TRAINING, typename T>
__device__ __forceinline__ T cell_forward(const T* xr, const T* hg, const T* peep, int u,
                                          int b, int B, int H, T hp, T cp, T* ar, T& cn,
                                          T& on, T& hn) {
    if (HasC<CELL>::value) {
        constexpr bool P = CELL == LSTM_P;
        const T i = sigmoid(xr[u] + product(hg, u, b, B) + (P ? peep[u] * cp : T(0)));
        const T f = sigmoid(xr[H + u] + product(hg, H + u, b, B) +
                            (P ? peep[H + u] * cp : T(0)));
        const T g = tanh(xr[2 * H + u] + product(hg, 2 * H + u, b, B));
        cn = f * cp + i * g;
        const T o = sigmoid(xr[3 * H + u] + product(hg, 3 * H + u, b, B) +
                            (P ? peep[2 * H + u] * cn : T(0)));
        if (TRAINING) { ar[u] = i; ar[H + u] = f; ar[2 * H + u] = g; ar[3 * H + u] = o; }
        on = o;
        return o * tanh(cn);
    } else if (CELL == GRU || CELL == GRU_RB) {
        const T r = sigmoid(xr[u] + product(hg, u, b, B));
        const T z = sigmoid(xr[H + u] + product(hg, H + u, b, B));
        hn = product(hg, 2 * H + u, b, B);  // GRU_RB: W_hn (r * h) + b_hn
        const T n = tanh(xr[2 * H + u] + (CELL == GRU ? r * hn : hn));
        if (TRAINING) { ar[u] = r; ar[H + u] = z; ar[2 * H + u] = n; }
        return n + z * (hp - n);
    } else {
        const T a = activate<CELL>(xr[u] + product(hg, u, b, B));
        if (TRAINING) ar[u] = a;
        return a;
    }
}

// GRU_RB backward, first part: the n gate's gradient (needed by every unit's d(r*h)).
template <typename T>
__device__ __forceinline__ T gru_reset_before_dn(const T* ar, T dht, int u, int H) {
    const T z = ar[H + u], n = ar[2 * H + u];
    return dht * (T(1) - z) * (T(1) - n * n);
}

// Backward: writes the gate gradients of unit u into gx (input side) and gh (recurrent
// side; the same array but for the GRUs), updates the LSTM's dc (in: after the step, out:
// before it), returns the GRU's direct path to dh_prev. dht: the state's whole gradient;
// hn: the GRU's W_hn h + b_hn; drh: GRU_RB's d(r*h); peep: LSTM_P's peephole weights
// (their gradients are sums over steps and rows, taken after the kernel).
// The LSTMs' gate gradients of unit u (into gh) and dc (in: after the step, out: before
// it), given the gradient dht reaching o * tanh(c~), tc = tanh(c~) and dthrough, the
// gradient reaching c' through c~ (c~ = c', or LN(c') in a layer-normalised cell).
template <int CELL, typename T>
__device__ __forceinline__ void lstm_backward(const T* ar, const T* peep, T dht, int u, int H,
                                              T tc, T dthrough, T cp, T& dc, T* gh) {
    constexpr bool P = CELL == LSTM_P;
    const T i = ar[u], f = ar[H + u], g = ar[2 * H + u], o = ar[3 * H + u];
    const T dout = dht * tc * o * (T(1) - o);
    const T dct = dc + dthrough + (P ? dout * peep[2 * H + u] : T(0));
    const T di = dct * g * i * (T(1) - i);
    const T df = dct * cp * f * (T(1) - f);
    gh[u] = di;
    gh[H + u] = df;
    gh[2 * H + u] = dct * i * (T(1) - g * g);
    gh[3 * H + u] = dout;
    dc = dct * f + (P ? di * peep[u] + df * peep[H + u] : T(0));
}

template <int CELL, typename T>
__device__ __forceinline__ T cell_backward(const T* ar, const T* peep, T dht, int u, int H,
                                           T hp, T ct, T cp, T& dc, T hn, T drh, T* gx,
                                           T* gh) {
    if (HasC<CELL>::value) {
        const T tc = tanh(ct);
        lstm_backward<CELL>(ar, peep, dht, u, H, tc, dht * ar[3 * H + u] * (T(1) - tc * tc),
                            cp, dc, gh);
        return T(0);
    } else if (CELL == GRU) {
        const T r = ar[u], z = ar[H + u], n = ar[2 * H + u];
        const T dn = dht * (T(1) - z) * (T(1) - n * n);
        const T dr = dn * hn * r * (T(1) - r);
        const T dz = dht * (hp - n) * z * (T(1) - z);
        gx[u] = dr; gx[H + u] = dz; gx[2 * H + u] = dn;
        gh[u] = dr; gh[H + u] = dz; gh[2 * H + u] = dn * r;
        return dht * z;
    } else if (CELL == GRU_RB) {  // (the n gate's gradient is written already)
        const T r = ar[u], z = ar[H + u], n = ar[2 * H + u];
        const T dr = drh * hp * r * (T(1) - r);
        const T dz = dht * (hp - n) * z * (T(1) - z);
        gx[u] = dr; gx[H + u] = dz;
        gh[u] = dr; gh[H + u] = dz;
        return dht * z + drh * r;
    } else {
        gh[u] = dht * activation_grad<CELL>(ar[u]);
        return T(0);
    }
}

// Sum over the 32 lanes of a warp (fixed order: deterministic).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

}  // namespace fastrnn
