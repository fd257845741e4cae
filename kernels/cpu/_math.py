"""Scalar building blocks of the CPU kernels: cell ids, activations, row copies and a
portable row-dot matmul.

Activations are specialised per dtype at compile time. float32 uses a rational tanh (the
[12/12] Pade approximant from tanh's continued fraction, relative error below 4e-7 on
float32, clamped where tanh is 1 to float32 precision); float64 an exp of its own (range
reduction by ln 2, a degree-13 polynomial, the power of two written into the exponent
bits; a few ulp) and tanh from its expm1. Neither calls libm, so the pointwise loops
vectorise in both dtypes. Both are overflow-safe: inputs of +-1e4 give finite results.
Each is compiled once per dtype and called (LLVM inlines it when it optimises the caller):
inlined by Numba at every call site instead, the pointwise steps took three times as long
to compile (docs/performance-notes.md, "Compilation").
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload
from numpy.polynomial import polynomial as _poly

from ..cells import CELLS
from ._jit import OPTIONS, jit


def _tanh_pade(depth):
    """Numerator and denominator of tanh(x) = x * P(x^2) / Q(x^2), from the continued
    fraction tanh x = x / (1 + x^2 / (3 + x^2 / (5 + ...))) cut after ``depth`` levels."""
    num, den = np.array([2.0 * depth + 1.0]), np.array([1.0])
    for k in range(depth - 1, -1, -1):
        num, den = _poly.polyadd((2 * k + 1) * num, _poly.polymulx(den)), num
    return tuple(den / num[0]), tuple(num / num[0])


_P, _Q = _tanh_pade(12)
assert len(_P) == 7 and len(_Q) == 7
P0, P1, P2, P3, P4, P5, P6 = (np.float32(c) for c in _P)
Q0, Q1, Q2, Q3, Q4, Q5, Q6 = (np.float32(c) for c in _Q)
# A zero typed int64, for a row, panel or unit start passed to a compiled function: a
# literal 0 would make Numba compile that function once more, specialised on the literal.
ROW0 = np.int64(0)

CLAMP = np.float32(9.0)  # tanh(9) = 1 - 3e-8: 1 in float32
F32_HALF = np.float32(0.5)


# Cell ids of the compiled loops (a run-time argument: one compiled loop serves every cell).
CELL_IDS = {name: spec.id for name, spec in CELLS.items()}
RNN_TANH, RNN_RELU, RNN_SIGMOID = CELL_IDS["rnn_tanh"], CELL_IDS["rnn_relu"], \
    CELL_IDS["rnn_sigmoid"]
LSTM, GRU, GRU_RB = CELL_IDS["lstm"], CELL_IDS["gru"], CELL_IDS["gru_reset_before"]
LSTM_P = CELL_IDS["lstm_peephole"]


@jit()
def has_cell_state(cell):
    """Whether ``cell`` carries a cell state (the LSTMs)."""
    return cell == LSTM or cell == LSTM_P


@intrinsic
def _f64_from_bits(typingctx, bits):
    """The float64 whose bit pattern is the int64 ``bits`` (a register move)."""
    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


# exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2 (ln 2 in two parts, the first
# exact in k * LN2_HI) in [-ln2/2, ln2/2], where Taylor's degree 13 leaves 4e-18
LOG2E = 1.4426950408889634
LN2_HI, LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10
E0, E1, E2, E3, E4, E5, E6, E7, E8, E9, E10, E11, E12, E13 = (
    1.0 / math.factorial(k) for k in range(14))
EXP_MIN = -708.0  # exp(-708) = 3e-308: 2^k stays a normal number
EXPM1_SERIES = -0.35  # above: expm1 from its series, where exp(y) - 1 would cancel


@jit()
def exp_nonpositive(x):
    """exp(x) in float64 for x <= 0 (below -708: exp(-708)), a few ulp."""
    x = max(x, EXP_MIN)
    k = np.floor(x * LOG2E + 0.5)
    r = (x - k * LN2_HI) - k * LN2_LO
    p = ((((((((((((E13 * r + E12) * r + E11) * r + E10) * r + E9) * r + E8) * r + E7) * r
                + E6) * r + E5) * r + E4) * r + E3) * r + E2) * r + E1) * r + E0
    return p * _f64_from_bits((np.int64(np.int32(k)) + 1023) << 52)


@jit()
def _expm1_nonpositive(y):
    """exp(y) - 1 in float64 for y <= 0, without cancellation near 0."""
    s = max(y, EXPM1_SERIES)
    series = s * (E1 + s * (E2 + s * (E3 + s * (E4 + s * (E5 + s * (E6 + s * (
        E7 + s * (E8 + s * (E9 + s * (E10 + s * (E11 + s * (E12 + s * E13))))))))))))
    return series if y > EXPM1_SERIES else exp_nonpositive(y) - 1.0


@jit()
def _tanh64(x):
    m = _expm1_nonpositive(-2.0 * abs(x))  # tanh|x| = -m / (2 + m)
    t = -m / (2.0 + m)
    return t if x >= 0 else -t


def tanh(x):
    """tanh specialised per dtype (compiled code only)."""
    raise NotImplementedError


def sigmoid(x):
    """Logistic function specialised per dtype (compiled code only)."""
    raise NotImplementedError


@overload(tanh, jit_options=OPTIONS)
def _tanh_impl(x):
    if x == types.float32:
        def impl(x):
            x = min(max(x, -CLAMP), CLAMP)
            u = x * x
            p = (((((P6 * u + P5) * u + P4) * u + P3) * u + P2) * u + P1) * u + P0
            q = (((((Q6 * u + Q5) * u + Q4) * u + Q3) * u + Q2) * u + Q1) * u + Q0
            return x * p / q
        return impl
    return lambda x: _tanh64(x)


@overload(sigmoid, jit_options=OPTIONS)
def _sigmoid_impl(x):
    if x == types.float32:
        return lambda x: F32_HALF + F32_HALF * tanh(F32_HALF * x)

    def impl(x):
        # exp only sees -|x|; branch-free: r = sigmoid(-|x|), and sigmoid(|x|) = 1 - r.
        e = exp_nonpositive(-abs(x))
        r = e / (1.0 + e)
        return r + (x >= 0) * (1.0 - 2.0 * r)
    return impl


def rnn_activation(cell, x):
    """The vanilla RNN's nonlinearity for ``cell`` (RNN_TANH, RNN_RELU or RNN_SIGMOID)."""
    raise NotImplementedError


@overload(rnn_activation, jit_options=OPTIONS)
def _rnn_activation_impl(cell, x):
    zero = np.float32(0)  # unifies with float64 in float64 kernels

    def impl(cell, x):
        if cell == RNN_TANH:
            return tanh(x)
        if cell == RNN_RELU:
            return max(x, zero)
        return sigmoid(x)
    return impl


def rnn_activation_grad(cell, dh, a):
    """``dh`` times the derivative of :func:`rnn_activation` at the point where it gave
    ``a``."""
    raise NotImplementedError


@overload(rnn_activation_grad, jit_options=OPTIONS)
def _rnn_activation_grad_impl(cell, dh, a):
    zero, one = np.float32(0), np.float32(1)

    def impl(cell, dh, a):
        if cell == RNN_TANH:
            return dh * (one - a * a)
        if cell == RNN_RELU:
            return dh if a > zero else zero
        return dh * a * (one - a)
    return impl


@jit()
def copy(dst, src):
    """``dst[:] = src`` for 1-D arrays of one length, as a plain loop: Numba's slice
    assignment checks for overlap and copies element by element without vectorising."""
    for j in range(dst.size):
        dst[j] = src[j]


@jit()
def outer(a, b, out):
    """``out[i, j] = a[i, 0] * b[0, j]``: a column times a row (a weight gradient of one
    step of one row). NumPy's BLAS call for it is ~3x slower (a GEMM with ``K = 1``)."""
    M = out.shape[0]
    br = b[0]
    for i in range(M):
        ai, o = a[i, 0], out[i]
        for j in range(br.size):
            o[j] = ai * br[j]


@jit()
def matmul_nt(a, r0, r1, w, j0, j1, out):
    """``out[r, j] = a[r, :] @ w[j, :]`` for rows ``r0 <= r < r1`` and ``j0 <= j < j1``:
    ``a [*,K]``, ``w [M,K]``, ``out [*,M]``.

    Register-blocked four rows of ``w`` by four rows of ``a``; the inner reduction over
    ``K`` runs along contiguous memory of both and vectorises under FASTMATH. Now only the
    fallback of :func:`._gemm.matvec` when ``K`` is not a whole number of vectors.
    """
    K = w.shape[1]
    zero = np.float32(0)  # unifies with float64 in float64 kernels
    j = j0
    while j + 4 <= j1:
        r = r0
        while r + 4 <= r1:
            c00 = c01 = c02 = c03 = zero
            c10 = c11 = c12 = c13 = zero
            c20 = c21 = c22 = c23 = zero
            c30 = c31 = c32 = c33 = zero
            for k in range(K):
                w0, w1, w2, w3 = w[j, k], w[j + 1, k], w[j + 2, k], w[j + 3, k]
                a0, a1, a2, a3 = a[r, k], a[r + 1, k], a[r + 2, k], a[r + 3, k]
                c00 += a0 * w0
                c01 += a0 * w1
                c02 += a0 * w2
                c03 += a0 * w3
                c10 += a1 * w0
                c11 += a1 * w1
                c12 += a1 * w2
                c13 += a1 * w3
                c20 += a2 * w0
                c21 += a2 * w1
                c22 += a2 * w2
                c23 += a2 * w3
                c30 += a3 * w0
                c31 += a3 * w1
                c32 += a3 * w2
                c33 += a3 * w3
            out[r, j], out[r, j + 1], out[r, j + 2], out[r, j + 3] = c00, c01, c02, c03
            out[r + 1, j], out[r + 1, j + 1], out[r + 1, j + 2], out[r + 1, j + 3] = \
                c10, c11, c12, c13
            out[r + 2, j], out[r + 2, j + 1], out[r + 2, j + 2], out[r + 2, j + 3] = \
                c20, c21, c22, c23
            out[r + 3, j], out[r + 3, j + 1], out[r + 3, j + 2], out[r + 3, j + 3] = \
                c30, c31, c32, c33
            r += 4
        while r < r1:
            c0 = c1 = c2 = c3 = zero
            for k in range(K):
                ak = a[r, k]
                c0 += ak * w[j, k]
                c1 += ak * w[j + 1, k]
                c2 += ak * w[j + 2, k]
                c3 += ak * w[j + 3, k]
            out[r, j], out[r, j + 1], out[r, j + 2], out[r, j + 3] = c0, c1, c2, c3
            r += 1
        j += 4
    while j < j1:
        for r in range(r0, r1):
            c = zero
            for k in range(K):
                c += a[r, k] * w[j, k]
            out[r, j] = c
        j += 1
