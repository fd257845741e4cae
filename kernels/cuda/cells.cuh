// Cell math for the CUDA kernels: ids, gate counts and overflow-safe activations.
// Equations and gate order: kernels/cells.py (PyTorch's and cuDNN's).
#pragma once

namespace fastrnn {

// Ids and gate counts come from kernels/cells.py, through the compile options of
// kernels/cuda/names.py: defines().
#if !defined(FASTRNN_NUM_CELLS)
#error "compile with the options of fastrnn.kernels.cuda.names.defines()"
#endif
enum Cell {
    RNN_TANH = FASTRNN_ID_RNN_TANH,
    RNN_RELU = FASTRNN_ID_RNN_RELU,
    RNN_SIGMOID = FASTRNN_ID_RNN_SIGMOID,
    LSTM = FASTRNN_ID_LSTM,
    GRU = FASTRNN_ID_GRU,
};
static_assert(FASTRNN_NUM_CELLS == 5, "kernels/cells.py has a cell these kernels lack");

template <int CELL>
struct Gates {
    static constexpr int G = CELL == LSTM          ? FASTRNN_GATES_LSTM
                             : CELL == GRU         ? FASTRNN_GATES_GRU
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

// Sum over the 32 lanes of a warp (fixed order: deterministic).
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

}  // namespace fastrnn
