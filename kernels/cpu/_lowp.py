"""Quantized inference's per-step input to the recurrent product (kernels/quantize.py).

The bfloat16 product of :func:`._gemm.matvec` splits each vector of weights in place into
its even and odd elements (widening within lanes, never across them), so it takes the
float32 state with each chunk's elements in that order (:func:`interleave`); the int8
product takes the state quantized to int16, one scale per row (:func:`quantize_rows`),
and multiplies in integers - twice the multiply-adds an instruction of float32 FMAs, on
weights a quarter of float32's size. :func:`product_input` gives each kind of weights its
input, chosen when Numba compiles the loop for the weights' type.
"""

import numpy as np
from numba import types
from numba.extending import overload

from ._gemm import INT16_LANES, PAIR_COLUMNS, VECTOR_LANES32, gemm_panels, matvec
from ._jit import OPTIONS, jit
from ._math import ROW0

# The int16 state's largest magnitude: the state's error is at most half a step of its
# row's max / 16383 (3e-5 relative), and a 32-bit lane of sums (two products of at most
# 127 * 16383 each per 16 multiply-adds) holds rows of up to 8256 units without overflow.
ACT_MAX = np.float32(2**14 - 1)
ONE = np.float32(1)
INT8_CHUNK = INT16_LANES  # elements a step of the int8 product takes
BF16_CHUNK = 2 * VECTOR_LANES32  # ... of the bfloat16 product


@jit()
def interleave(a, out, chunk):
    """``out [B,K]``: each row of ``a [B,K]`` with each ``chunk`` of its elements as its
    even ones, then its odd ones (``K`` a whole number of chunks)."""
    B, K = a.shape
    half = chunk // 2
    for r in range(B):
        for c0 in range(0, K, chunk):
            for i in range(half):
                out[r, c0 + i] = a[r, c0 + 2 * i]
                out[r, c0 + half + i] = a[r, c0 + 2 * i + 1]


@jit()
def quantize_rows(a, hq, hs):
    """``hq [B,K]`` int16 and ``hs [B]``: row ``r`` of ``a [B,K]`` is about ``hq[r] *
    hs[r]``, ``hs[r] = max |a[r]| / ACT_MAX`` (1 for a row of zeros), rounded to
    nearest."""
    B, K = a.shape
    for r in range(B):
        m = np.float32(0)
        for k in range(K):
            v = abs(a[r, k])
            if v > m:
                m = v
        s = m / ACT_MAX if m > 0 else ONE
        inv = ONE / s
        for k in range(K):
            hq[r, k] = np.int16(np.rint(a[r, k] * inv))
        hs[r] = s


def product_input(a, w):
    """``(rows, row_scales)``: what the recurrent product of the state ``a [B,K]`` with
    weights ``w`` multiplies - for int8 ``w`` the state quantized to int16 and each row's
    scale, for bfloat16 ``w`` (``uint16``) the state interleaved, as :func:`._gemm.matvec`
    takes them; for float ``w``, ``a`` itself. ``row_scales`` is
    empty but for int8."""
    raise NotImplementedError("product_input runs in compiled code only")


@overload(product_input, jit_options=OPTIONS)
def _product_input(a, w):
    if isinstance(w, types.Array) and w.dtype == types.int8:
        def quantized(a, w):
            hq = np.empty(a.shape, np.int16)
            hs = np.empty(a.shape[0], np.float32)
            quantize_rows(a, hq, hs)
            return hq, hs
        return quantized
    if isinstance(w, types.Array) and w.dtype == types.uint16:
        def interleaved(a, w):
            out = np.empty(a.shape, a.dtype)
            interleave(a, out, BF16_CHUNK)
            return out, np.empty(0, np.float32)
        return interleaved

    def as_it_is(a, w):
        return a, np.empty(0, a.dtype)
    return as_it_is


@jit()
def scaled_product(act, act_scale, w, scale, j0, j1, out, back=False):
    """``out[r, j] = (act[r] @ w[j]) * act_scale[r] * scale[j]`` for every row ``r`` of
    ``act`` and ``j0 <= j < j1`` (:func:`._gemm.matvec`; either scale empty for none):
    the product of :func:`product_input`'s rows with weights ``w`` (``scale``: int8
    weights' row scales)."""
    matvec(act, ROW0, act.shape[0], w, j0, j1, out, back)
    if scale.size > 0:
        for r in range(act.shape[0]):
            sr = act_scale[r] if act_scale.size > 0 else ONE
            for j in range(j0, j1):
                out[r, j] *= scale[j] * sr


@jit()
def project(x, w, scale, out):
    """``out [N,M] = x [N,K] @ w.T`` for weights ``w [M,K]`` of any kind (``scale``: int8
    weights' row scales, else empty): a quantized layer's input projection on one
    thread."""
    act, act_scale = product_input(x, w)
    scaled_product(act, act_scale, w, scale, ROW0, w.shape[0], out)


def product_rows(a, r0, r1, wp):
    """:func:`product_input` for rows ``r0 <= r < r1`` of ``a [B,K]`` and packed weights
    ``wp``: for int8 panels (:func:`._gemm.pack_pairs`) those rows quantized to int16 in
    an array like ``a`` (other rows unset) and every row's scale; for float panels ``a``
    itself and no scales."""
    raise NotImplementedError("product_rows runs in compiled code only")


@overload(product_rows, jit_options=OPTIONS)
def _product_rows(a, r0, r1, wp):
    if isinstance(wp, types.Array) and wp.dtype == types.int8:
        def quantized(a, r0, r1, wp):
            hq = np.empty(a.shape, np.int16)
            hs = np.empty(a.shape[0], np.float32)
            quantize_rows(a[r0:r1], hq[r0:r1], hs[r0:r1])
            return hq, hs
        return quantized

    def as_it_is(a, r0, r1, wp):
        return a, np.empty(0, a.dtype)
    return as_it_is


@jit()
def scaled_panels(a, r0, r1, wp, p0, p1, out, step, scale):
    """:func:`._gemm.gemm_panels` of rows ``r0 <= r < r1`` of ``a`` with panels ``p0 <= p <
    p1`` of ``wp``, float or int8 (:func:`._gemm.pack_pairs`: ``a``'s rows quantized by
    :func:`product_rows`, then each product scaled by its row's scale and ``scale``, the
    weights' row scales in the panels' column order; empty for float)."""
    act, act_scale = product_rows(a, r0, r1, wp)
    gemm_panels(act, r0, r1, wp, p0, p1, out, step)
    if scale.size > 0:
        for r in range(r0, r1):
            sr = act_scale[r]
            for j in range(p0 * PAIR_COLUMNS, p1 * PAIR_COLUMNS):
                out[r, j] *= scale[j] * sr
