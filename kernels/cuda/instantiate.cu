// Every specialisation the gpu backend launches, instantiated explicitly so that a plain
// `nvcc --ptx` of this file checks them all (tests/test_cuda_compile.py; CI has no GPU).
// At run time CuPy compiles rnn.cu with the same list as name expressions.
#include "rnn.cu"

#define FORWARD(T, CELL)                                                                    \
    template __global__ void rnn_forward<T, CELL, true, true>(RNN_FORWARD_PARAMS(T));       \
    template __global__ void rnn_forward<T, CELL, true, false>(RNN_FORWARD_PARAMS(T));      \
    template __global__ void rnn_forward<T, CELL, false, true>(RNN_FORWARD_PARAMS(T));      \
    template __global__ void rnn_forward<T, CELL, false, false>(RNN_FORWARD_PARAMS(T));

#define BACKWARD(T, CELL)                                                                   \
    template __global__ void rnn_backward<T, CELL, true>(RNN_BACKWARD_PARAMS(T));           \
    template __global__ void rnn_backward<T, CELL, false>(RNN_BACKWARD_PARAMS(T));

// every cell of kernels/cells.py (FASTRNN_EACH_CELL: the generated cell_ids.cuh)
#define BOTH(CELL) FORWARD(float, CELL) FORWARD(double, CELL) BACKWARD(float, CELL)         \
    BACKWARD(double, CELL)

FASTRNN_EACH_CELL(BOTH)
