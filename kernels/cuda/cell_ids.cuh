// Generated from kernels/cells.py by kernels/cuda/names.py (cell_header); do not
// edit: tests/test_cuda_compile.py fails when the two disagree.
#pragma once

#define FASTRNN_NUM_CELLS 7
#define FASTRNN_ID_RNN_TANH 0
#define FASTRNN_GATES_RNN_TANH 1
#define FASTRNN_ID_RNN_RELU 1
#define FASTRNN_GATES_RNN_RELU 1
#define FASTRNN_ID_RNN_SIGMOID 2
#define FASTRNN_GATES_RNN_SIGMOID 1
#define FASTRNN_ID_LSTM 3
#define FASTRNN_GATES_LSTM 4
#define FASTRNN_ID_GRU 4
#define FASTRNN_GATES_GRU 3
#define FASTRNN_ID_GRU_RESET_BEFORE 5
#define FASTRNN_GATES_GRU_RESET_BEFORE 3
#define FASTRNN_ID_LSTM_PEEPHOLE 6
#define FASTRNN_GATES_LSTM_PEEPHOLE 4
#define FASTRNN_EACH_CELL(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6)
