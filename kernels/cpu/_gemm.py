"""The per-step recurrent GEMM: a register-tiled microkernel over pre-packed weights.

``out[r, :] = a[r, :] @ W`` for a block of rows, with ``W [K, N]`` packed once per call into
panels of ``NR`` columns (``wp [N/NR, K, NR]``, zero-padded to whole panels) so that every
load of the weights is contiguous. The microkernel keeps an ``MR x NR`` tile of ``out`` in
vector registers for the whole ``K`` loop: per ``k`` it loads two vectors of the panel,
broadcasts ``MR`` values of ``a`` and issues ``2*MR`` FMAs. It is written as LLVM vector IR
(a Numba intrinsic): Numba's own loops over the same tile left the accumulators in memory.
The vector width follows the host: 16 float32 lanes with AVX-512, else 8.

A kernel that reduces along ``K`` pays a horizontal sum per output and runs at about half
the rate. Batch 1-2 loops use :func:`matvec` instead, on the unpacked weights: a
matrix-vector product is bound by reading the weights, and packing them costs more than it
saves there (docs/performance-notes.md, "The per-step product").
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._alloc import empty
from ._jit import AVX512, jit
from ._math import ROW0, matmul_nt

_VECTOR_BYTES = 64 if AVX512 else 32
# Rows per tile: its 2*MR accumulators, 2 weight vectors and 1 broadcast must fit in the
# vector registers, 32 with AVX-512 (MR=8: 19), 16 with AVX2 (MR=6: 15).
MR = 8 if AVX512 else 6


def panel_width(dtype):
    """Columns per panel (two vectors) for ``dtype``."""
    return 2 * _VECTOR_BYTES // np.dtype(dtype).itemsize


def pack(w, transpose):
    """Pack ``W = w.T`` (``transpose``) or ``W = w`` into ``[P, K, NR]`` panels."""
    if transpose:
        wp, _ = pack_blocks(w, [(0, w.shape[0])])
        return wp
    wp, _ = pack_column_blocks(w, [(0, w.shape[1])])
    return wp


def pack_column_blocks(w, blocks):
    """Like :func:`pack_blocks` for column blocks ``[j0, j1)`` of ``W = w``."""
    return _pack(w, blocks, columns=True)


def pack_blocks(w, blocks):
    """Pack row blocks ``[r0, r1)`` of ``w [M,K]`` each into its own panels (``W =
    w[r0:r1].T``), one after another: returns ``wp`` and ``starts`` (the first panel of each
    block, then the total). Block ``i``'s products land in ``out`` columns from
    ``starts[i]*NR``."""
    return _pack(w, blocks, columns=False)


# Weights at least this large are packed by all threads.
_PARALLEL_PACK_BYTES = 1 << 20
# Column blocks are packed this many rows of ``w`` at a time, every panel's share of them
# before the next rows: a panel at a time would walk all of ``w`` (a TLB miss every few
# rows) once per panel.
_PACK_ROWS = 16


def _pack(w, blocks, columns):
    nr = panel_width(w.dtype)
    starts = [0]
    for lo, hi in blocks:
        starts.append(starts[-1] + -(-(hi - lo) // nr))
    K = w.shape[0] if columns else w.shape[1]
    wp = empty((starts[-1], K, nr), w.dtype)
    bounds = np.array(blocks, np.int64).reshape(-1, 2)
    starts = np.array(starts, np.int64)
    parallel = w.nbytes >= _PARALLEL_PACK_BYTES
    if columns:
        (_pack_columns_parallel if parallel else _pack_columns)(w, bounds, starts, wp)
    else:
        (_pack_rows_parallel if parallel else _pack_rows)(w, bounds, starts, wp)
    return wp, starts


@jit()
def _pack_row_panel(w, bounds, starts, wp, gp):
    """Panel ``gp`` of row blocks: ``W = w[r0:r1].T``'s columns ``p*NR..`` of its block, zero
    past the block's end. Each row of the panel gathers one column of ``NR`` rows of ``w``
    (faster than writing a column at a time)."""
    K, NR = wp.shape[1], wp.shape[2]
    zero = np.float32(0)
    i = 0
    while starts[i + 1] <= gp:  # the panel's block (a few blocks: a linear search)
        i += 1
    lo, hi = bounds[i, 0], bounds[i, 1]
    r0 = lo + (gp - starts[i]) * NR  # the panel's first column of W
    panel = wp[gp]
    if r0 + NR <= hi:
        rows = w[r0:r0 + NR]
        for k in range(K):
            dst = panel[k]
            for c in range(NR):
                dst[c] = rows[c, k]
        return
    for k in range(K):
        for c in range(NR):
            panel[k, c] = w[r0 + c, k] if r0 + c < hi else zero


@jit()
def _pack_rows(w, bounds, starts, wp):
    for gp in range(wp.shape[0]):
        _pack_row_panel(w, bounds, starts, wp, gp)


@jit(parallel=True)
def _pack_rows_parallel(w, bounds, starts, wp):
    for gp in prange(wp.shape[0]):
        _pack_row_panel(w, bounds, starts, wp, gp)


@jit()
def _pack_column_rows(w, bounds, starts, wp, k0, k1):
    """Rows ``k0 <= k < k1`` of every panel of column blocks (``W = w[:, j0:j1]``), zero
    past each block's end."""
    NR = wp.shape[2]
    zero = np.float32(0)
    for i in range(bounds.shape[0]):
        lo, hi = bounds[i, 0], bounds[i, 1]
        for p in range(starts[i + 1] - starts[i]):
            panel = wp[starts[i] + p]
            c0 = lo + p * NR
            if c0 + NR <= hi:  # a whole panel: plain row copies
                for k in range(k0, k1):
                    dst, src = panel[k], w[k, c0:c0 + NR]
                    for c in range(NR):
                        dst[c] = src[c]
            else:
                for k in range(k0, k1):
                    for c in range(NR):
                        panel[k, c] = w[k, c0 + c] if c0 + c < hi else zero


@jit()
def _pack_columns(w, bounds, starts, wp):
    K = wp.shape[1]
    for k0 in range(0, K, _PACK_ROWS):
        _pack_column_rows(w, bounds, starts, wp, k0, min(K, k0 + _PACK_ROWS))


@jit(parallel=True)
def _pack_columns_parallel(w, bounds, starts, wp):
    K = wp.shape[1]
    for i in prange((K + _PACK_ROWS - 1) // _PACK_ROWS):
        _pack_column_rows(w, bounds, starts, wp, i * _PACK_ROWS,
                          min(K, (i + 1) * _PACK_ROWS))


def _tile(rows, prefetch=False):
    """An intrinsic computing a ``rows x NR`` tile: ``tile(a, a_off, lda, wp, w_off, out,
    o_off, ldo, K)`` with element offsets into the arrays' data. With ``prefetch`` it takes
    two more, ``pf_off`` and ``pf_step``, and for each ``k`` asks for the cache line of
    ``wp``'s element ``pf_off + k*pf_step`` to be brought into L2 (``prefetcht1``): a
    stretch of the panel the caller needs next."""

    def typing(a, wp, out):
        if not all(isinstance(t, types.Array) for t in (a, wp, out)):
            return None
        pairs = (a.dtype == types.int16 and wp.dtype == types.int8
                 and out.dtype == types.float32)
        if not pairs and not (a.dtype == wp.dtype == out.dtype and a.dtype in (
                types.float32, types.float64)):
            return None
        return types.none(a, types.int64, types.int64, wp, types.int64, out, types.int64,
                          types.int64, types.int64, *((types.int64,) * 2 if prefetch else ()))

    if prefetch:
        @intrinsic
        def tile(typingctx, a, a_off, lda, wp, w_off, out, o_off, ldo, K, pf_off, pf_step):
            sig = typing(a, wp, out)
            return None if sig is None else (sig, codegen)
    else:
        @intrinsic
        def tile(typingctx, a, a_off, lda, wp, w_off, out, o_off, ldo, K):
            sig = typing(a, wp, out)
            return None if sig is None else (sig, codegen)

    def codegen(context, builder, sig, args):
        if sig.args[0].dtype == types.int16:
            return _pair_tile_codegen(context, builder, sig, args, rows, prefetch)
        a_v, a_off_v, lda_v, wp_v, w_off_v, out_v, o_off_v, ldo_v, k_v = args[:9]
        fty = context.get_value_type(sig.args[0].dtype)
        lanes = _VECTOR_BYTES // (4 if sig.args[0].dtype == types.float32 else 8)
        vty = ir.VectorType(fty, lanes)
        pa = context.make_array(sig.args[0])(context, builder, a_v).data
        pw = context.make_array(sig.args[3])(context, builder, wp_v).data
        po = context.make_array(sig.args[5])(context, builder, out_v).data
        zero = ir.Constant(vty, [ir.Constant(fty, 0.0)] * lanes)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)]
               for _ in range(rows)]
        undef = ir.Constant(vty, ir.Undefined)
        splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
        i64 = ir.IntType(64)
        align = 4 if sig.args[0].dtype == types.float32 else 8
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty, [vty, vty, vty]),
            "llvm.fma.v%d%s" % (lanes, "f32" if align == 4 else "f64"))
        with cgutils.for_range(builder, k_v) as loop:
            k = loop.index
            if prefetch:
                _prefetch(builder, pw, args, k)
            wbase = builder.add(w_off_v, builder.mul(k, ir.Constant(i64, 2 * lanes)))
            wvec = []
            for h in range(2):
                ptr = builder.gep(pw, [builder.add(wbase, ir.Constant(i64, h * lanes))])
                wvec.append(builder.load(builder.bitcast(ptr, vty.as_pointer()),
                                         align=align))
            for r in range(rows):
                off = builder.add(builder.add(a_off_v, builder.mul(
                    ir.Constant(i64, r), lda_v)), k)
                s = builder.load(builder.gep(pa, [off]))
                v = builder.shuffle_vector(
                    builder.insert_element(undef, s, ir.Constant(ir.IntType(32), 0)),
                    undef, splat_mask)
                for h in range(2):
                    builder.store(builder.call(fma, [v, wvec[h], builder.load(acc[r][h])]),
                                  acc[r][h])
        for r in range(rows):
            row = builder.add(o_off_v, builder.mul(ir.Constant(i64, r), ldo_v))
            for h in range(2):
                ptr = builder.gep(po, [builder.add(row, ir.Constant(i64, h * lanes))])
                builder.store(builder.load(acc[r][h]),
                              builder.bitcast(ptr, vty.as_pointer()), align=align)
        return context.get_dummy_value()
    return tile


def _prefetch(builder, pw, args, k):
    """A tile's prefetch for step ``k``: the cache line of ``wp``'s element ``pf_off +
    k*pf_step`` (the tile's arguments 9 and 10) into L2 (read, locality 2: prefetcht1)."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
        "llvm.prefetch.p0")
    ptr = builder.gep(pw, [builder.add(args[9], builder.mul(k, args[10]))])
    builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 2),
                      ir.Constant(i32, 1)])


def _pair_tile_codegen(context, builder, sig, args, rows, prefetch):
    """:func:`_tile` of an integer product: ``a`` int16 (a state quantized per row), ``wp``
    int8 panels of :func:`pack_pairs` (``k`` in pairs: a panel's row ``kk`` holds
    ``w[j, 2kk], w[j, 2kk+1]`` for each of its ``PAIR_COLUMNS`` columns ``j``), ``out``
    float32; ``K`` counts the pairs. Per pair: the two int16 of each row of ``a`` broadcast
    as one 32-bit value, two vectors of the panel, and per row and vector one ``vpmaddwd``
    (16 multiply-adds into 8 int32 sums) and an add: twice the multiply-adds of the float32
    tile's FMAs. The sums are written as float32 (scales are the caller's)."""
    a_v, a_off_v, lda_v, wp_v, w_off_v, out_v, o_off_v, ldo_v, k_v = args[:9]
    i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
    lanes = 8  # int32 sums a vector (256 bits)
    wty, acc_ty, wide = ir.VectorType(ir.IntType(8), 2 * lanes), ir.VectorType(i32, lanes), \
        ir.VectorType(i32, 2 * lanes)
    pa = context.make_array(sig.args[0])(context, builder, a_v).data
    pw = context.make_array(sig.args[3])(context, builder, wp_v).data
    po = context.make_array(sig.args[5])(context, builder, out_v).data
    zero = ir.Constant(acc_ty, [ir.Constant(i32, 0)] * lanes)
    acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(2)] for _ in range(rows)]
    undef = ir.Constant(acc_ty, ir.Undefined)
    splat = ir.Constant(acc_ty, [0] * lanes)
    even, odd = (ir.Constant(acc_ty, list(range(j, 2 * lanes, 2))) for j in (0, 1))
    with cgutils.for_range(builder, k_v) as loop:
        kk = loop.index
        if prefetch:
            _prefetch(builder, pw, args, kk)
        wbase = builder.add(w_off_v, builder.mul(kk, ir.Constant(i64, 4 * lanes)))
        wvec = []
        for h in range(2):
            ptr = builder.gep(pw, [builder.add(wbase, ir.Constant(i64, h * 2 * lanes))])
            wvec.append(builder.sext(builder.load(builder.bitcast(ptr, wty.as_pointer()),
                                                  align=1), wide))
        for r in range(rows):
            off = builder.add(builder.add(a_off_v, builder.mul(ir.Constant(i64, r), lda_v)),
                              builder.mul(kk, ir.Constant(i64, 2)))
            pair = builder.load(builder.bitcast(builder.gep(pa, [off]), i32.as_pointer()),
                                align=2)
            v = builder.shuffle_vector(builder.insert_element(undef, pair, ir.Constant(i32, 0)),
                                       undef, splat)
            v = builder.sext(builder.bitcast(v, ir.VectorType(i16, 2 * lanes)), wide)
            for h in range(2):
                p = builder.mul(wvec[h], v)
                sums = builder.add(builder.shuffle_vector(p, p, even),
                                   builder.shuffle_vector(p, p, odd))
                builder.store(builder.add(builder.load(acc[r][h]), sums), acc[r][h])
    fty = ir.VectorType(ir.FloatType(), lanes)
    for r in range(rows):
        row = builder.add(o_off_v, builder.mul(ir.Constant(i64, r), ldo_v))
        for h in range(2):
            ptr = builder.gep(po, [builder.add(row, ir.Constant(i64, h * lanes))])
            builder.store(builder.sitofp(builder.load(acc[r][h]), fty),
                          builder.bitcast(ptr, fty.as_pointer()), align=4)
    return context.get_dummy_value()


# Columns of a panel of int8 weights packed in pairs (pack_pairs): two vectors of 8 sums
PAIR_COLUMNS = 16


def pack_pairs(values, blocks):
    """Pack row blocks ``[r0, r1)`` of int8 ``values [M,K]`` (``K`` even) as
    :func:`pack_blocks` does, for the integer tile: ``wp [P, K/2, 2*PAIR_COLUMNS]`` int8,
    panel ``p``'s row ``kk`` holding ``w[j, 2kk], w[j, 2kk+1]`` for its columns ``j``
    (zero past a block's end). Returns ``wp`` and ``starts``."""
    starts = [0]
    for lo, hi in blocks:
        starts.append(starts[-1] + -(-(hi - lo) // PAIR_COLUMNS))
    wp = empty((starts[-1], values.shape[1] // 2, 2 * PAIR_COLUMNS), np.int8)
    starts = np.array(starts, np.int64)
    _pack_pairs(values, np.array(blocks, np.int64).reshape(-1, 2), starts, wp)
    return wp, starts


@jit(parallel=True)
def _pack_pairs(values, bounds, starts, wp):
    K2, NR = wp.shape[1], wp.shape[2] // 2
    for gp in prange(wp.shape[0]):
        i = 0
        while starts[i + 1] <= gp:
            i += 1
        lo, hi = bounds[i, 0], bounds[i, 1]
        r0 = lo + (gp - starts[i]) * NR
        panel = wp[gp]
        for c in range(NR):
            j = r0 + c
            for kk in range(K2):
                if j < hi:
                    panel[kk, 2 * c] = values[j, 2 * kk]
                    panel[kk, 2 * c + 1] = values[j, 2 * kk + 1]
                else:
                    panel[kk, 2 * c] = 0
                    panel[kk, 2 * c + 1] = 0


_t1, _t2, _t4, _tmr = (_tile(r) for r in (1, 2, 4, MR))
_tmr_p, _t4_p = _tile(MR, prefetch=True), _tile(4, prefetch=True)
# With MR = 6 (AVX2), a block whose last MR-row tile would leave 2 or 3 rows takes its last
# 8 or 9 rows as two 4-row tiles (and a 1-row one): a 2-row tile keeps 4 sums in flight,
# too few to cover the FMA latency (8 rows by 256 x 1024 on Zen 3: 63.0 -> 59.5 us).
_FOURS_FOR_SHORT_TAIL = MR == 6

# A walk over at least this many bytes of panels prefetches each next panel into L2 while
# it computes the current one (see :func:`gemm_panels`).
_PREFETCH_BYTES = 1 << 20


@jit()
def gemm_packed(a, r0, r1, wp, out, step=0):
    """``out[r, :P*NR] = a[r, :K] @ W`` for rows ``r0 <= r < r1`` (``wp``: :func:`pack`).
    ``out`` needs room for whole panels: at least ``P*NR`` columns. ``step``: see
    :func:`gemm_panels`."""
    gemm_panels(a, r0, r1, wp, ROW0, wp.shape[0], out, step)


@jit()
def gemm_panels(a, r0, r1, wp, p0, p1, out, step=0):
    """:func:`gemm_packed` for panels ``p0 <= p < p1`` only (columns ``p*NR`` onwards).

    A time loop passes its step number: odd steps walk the panels in reverse, so a step
    starts on the panels the previous one used last, which are still in L2. Weights a bit
    larger than L2 then mostly come from L2 instead of all from L3 every step.

    A walk over at least ``_PREFETCH_BYTES`` also prefetches the next panel into L2 while
    it computes the current one, the panel's ``MR``- and 4-row tiles each asking for an
    equal share of it, so the panel's first tile no longer waits on L3 (weights larger than a
    core's L2, or sharing it with a step's other arrays). Measurements of both: see
    docs/performance-notes.md, "The per-step product".

    int16 ``a`` (a state quantized per row) with panels of :func:`pack_pairs` computes the
    integer product (:func:`_pair_tile_codegen`), ``PAIR_COLUMNS`` columns a panel."""
    K, NR = wp.shape[1], wp.shape[2]
    cols = NR // 2 if a.itemsize == 2 else NR  # (output columns a panel: pack_pairs)
    lda = a.strides[0] // a.itemsize
    ldo = out.strides[0] // out.itemsize
    fetch = (p1 - p0) * K * NR * wp.itemsize >= _PREFETCH_BYTES
    full = (r1 - r0) // MR  # row tiles of MR, then of 4, 2 and 1
    tail = r1 - r0 - full * MR
    if _FOURS_FOR_SHORT_TAIL and full > 0 and (tail == 2 or tail == 3):
        full -= 1
        tail += MR
    fours = tail // 4
    tiles = max(1, full + fours)
    pf_step = max(1, NR // tiles)  # elements per k: the tiles share the next panel evenly
    for i in range(p1 - p0):
        back = step % 2 == 1
        p = p1 - 1 - i if back else p0 + i
        nxt = p - 1 if back else p + 1  # (none after the last: the next step starts here)
        w_off = p * K * NR
        pf = fetch and i + 1 < p1 - p0
        r = r0
        for tile in range(full + fours):
            rows = MR if tile < full else 4
            pf_off = nxt * K * NR + tile * K * pf_step
            if rows == MR and pf:
                _tmr_p(a, r * lda, lda, wp, w_off, out, r * ldo + p * cols, ldo, K, pf_off,
                       pf_step)
            elif rows == MR:
                _tmr(a, r * lda, lda, wp, w_off, out, r * ldo + p * cols, ldo, K)
            elif pf:
                _t4_p(a, r * lda, lda, wp, w_off, out, r * ldo + p * cols, ldo, K, pf_off,
                      pf_step)
            else:
                _t4(a, r * lda, lda, wp, w_off, out, r * ldo + p * cols, ldo, K)
            r += rows
        if r + 2 <= r1:
            _t2(a, r * lda, lda, wp, w_off, out, r * ldo + p * cols, ldo, K)
            r += 2
        if r < r1:
            _t1(a, r * lda, lda, wp, w_off, out, r * ldo + p * cols, ldo, K)


def _dots(rows, vecs=1):
    """An intrinsic computing the ``rows * vecs`` dot products of ``rows`` consecutive rows
    of ``w`` with ``vecs`` rows of ``a``: ``dots(a, a_off, lda, w, w_off, ldw, out, o_off,
    ldo, K)`` sets ``out[o_off + v*ldo + r] = a[a_off + v*lda :][:K] @ w[w_off + r*ldw
    :][:K]``, ``K`` a whole number of steps (a vector of ``a``'s elements; two for bfloat16
    weights: ``_lowp.BF16_CHUNK``). Full-width loads of each weight row
    (Numba's loops used half-width ones here), each weight vector used for every row of
    ``a`` (the product is bound by reading the weights), one accumulator per output, a tree
    sum at the end.

    Low-precision weights (kernels/quantize.py): bfloat16 (``uint16``) with float32 ``a``
    loads a full vector of values and splits it in place into its even and odd elements,
    widened by a shift and a mask within each 32-bit lane, never across lanes (2 uops a
    vector of float32 instead of a lane-crossing widening load each half); ``a`` comes
    with each step's elements in that order, the even ones then the odd ones
    (:func:`._lowp.interleave`). int8 with int16 ``a`` (the state quantized per row)
    multiplies in integers: weights sign-extended to 16 bits as they load, pairs of
    products summed into 32-bit lanes (``vpmaddwd`` on x86, 16 multiply-adds an
    instruction), each sum written as float32."""

    @intrinsic
    def dots(typingctx, a, a_off, lda, w, w_off, ldw, out, o_off, ldo, K):
        if not all(isinstance(t, types.Array) for t in (a, w, out)):
            return None
        kind = _product_kind(a.dtype, w.dtype)
        if kind is None or out.dtype != (types.float32 if kind != "float" else a.dtype):
            return None
        sig = types.none(a, types.int64, types.int64, w, types.int64, types.int64, out,
                         types.int64, types.int64, types.int64)

        def codegen(context, builder, sig, args):
            a_v, a_off_v, lda_v, w_v, w_off_v, ldw_v, out_v, o_off_v, ldo_v, k_v = args
            i32, i64 = ir.IntType(32), ir.IntType(64)
            ety = context.get_value_type(sig.args[0].dtype)
            if kind == "int8":  # 16 int16 lanes of a a vector, sums in 8 int32 lanes
                lanes, align = INT16_LANES, 2
                acc_ty = ir.VectorType(i32, lanes // 2)
            else:
                single = sig.args[0].dtype == types.float32
                lanes, align = _VECTOR_BYTES // (4 if single else 8), (4 if single else 8)
                acc_ty = ir.VectorType(ety, lanes)
                fma = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(acc_ty, [acc_ty] * 3),
                    "llvm.fma.v%d%s" % (lanes, "f32" if single else "f64"))
            parts = 2 if kind == "bfloat16" else 1  # (vectors of a per load of weights)
            vty = ir.VectorType(ety, lanes)
            pa = context.make_array(sig.args[0])(context, builder, a_v).data
            pw = context.make_array(sig.args[3])(context, builder, w_v).data
            po = context.make_array(sig.args[6])(context, builder, out_v).data
            zero = ir.Constant(acc_ty, [ir.Constant(acc_ty.element, 0)] * acc_ty.count)
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(rows)]
                   for _ in range(vecs)]
            n_chunks = builder.udiv(k_v, ir.Constant(i64, lanes * parts))

            def load(ptr, off, ty, alignment):
                return builder.load(builder.bitcast(builder.gep(ptr, [off]), ty.as_pointer()),
                                    align=alignment)

            def wload(off):
                """The weights at ``off`` as the products take them: one vector, or the
                even and odd elements of a vector's worth of low-precision values."""
                if kind == "float":
                    return [load(pw, off, vty, align)]
                if kind == "int8":  # (vpmovsxbw: in-lane shifts measured slower here)
                    v = load(pw, off, ir.VectorType(ir.IntType(8), lanes), 1)
                    return [builder.sext(v, ir.VectorType(ir.IntType(16), lanes))]
                v = load(pw, off, ir.VectorType(i32, lanes), 2)  # bfloat16 pairs in 32 bits
                even = builder.shl(v, ir.Constant(v.type, [16] * lanes))
                odd = builder.and_(v, ir.Constant(v.type, [0xFFFF0000] * lanes))
                return [builder.bitcast(even, vty), builder.bitcast(odd, vty)]

            def mac(wv, av, total):
                if kind != "int8":
                    return builder.call(fma, [wv, av, total])
                wide = ir.VectorType(i32, lanes)  # products of pairs, summed (vpmaddwd)
                p = builder.mul(builder.sext(wv, wide), builder.sext(av, wide))
                half = ir.VectorType(i32, lanes // 2)
                even, odd = (ir.Constant(half, list(range(j, lanes, 2))) for j in (0, 1))
                pairs = builder.add(builder.shuffle_vector(p, p, even),
                                    builder.shuffle_vector(p, p, odd))
                return builder.add(total, pairs)

            with cgutils.for_range(builder, n_chunks) as loop:
                k = builder.mul(loop.index, ir.Constant(i64, lanes * parts))
                avs = [[load(pa, builder.add(builder.add(a_off_v, builder.mul(
                    ir.Constant(i64, v), lda_v)), builder.add(k, ir.Constant(i64, lanes * h))),
                    vty, align) for h in range(parts)] for v in range(vecs)]
                for r in range(rows):
                    row = builder.add(w_off_v, builder.mul(ir.Constant(i64, r), ldw_v))
                    wvs = wload(builder.add(row, k))
                    for v in range(vecs):
                        total = builder.load(acc[v][r])
                        for h in range(parts):
                            total = mac(wvs[h], avs[v][h], total)
                        builder.store(total, acc[v][r])
            for v in range(vecs):
                o_row = builder.add(o_off_v, builder.mul(ir.Constant(i64, v), ldo_v))
                for r in range(rows):
                    s = builder.load(acc[v][r])
                    width = acc_ty.count
                    while width > 1:  # tree sum: add the upper half onto the lower
                        width //= 2
                        hi = builder.shuffle_vector(s, s, ir.Constant(
                            ir.VectorType(i32, acc_ty.count),
                            [width + i if i < width else i for i in range(acc_ty.count)]))
                        s = builder.add(s, hi) if kind == "int8" else builder.fadd(s, hi)
                    total = builder.extract_element(s, ir.Constant(i32, 0))
                    if kind == "int8":
                        total = builder.sitofp(total, ir.FloatType())
                    builder.store(total, builder.gep(po, [builder.add(o_row,
                                                                      ir.Constant(i64, r))]))
            return context.get_dummy_value()
        return sig, codegen
    return dots


def _product_kind(a, w):
    """``"float"`` (float32 or float64, both the same), ``"bfloat16"`` (``uint16`` weights,
    float32 ``a``), ``"int8"`` (int8 weights, int16 ``a``) or None: what :func:`_dots`
    computes for these dtypes."""
    if a == w and a in (types.float32, types.float64):
        return "float"
    if a == types.float32 and w == types.uint16:
        return "bfloat16"
    if a == types.int16 and w == types.int8:
        return "int8"
    return None


_d1, _d4, _d8 = _dots(1), _dots(4), _dots(8)
_d4x2, _d4x4 = _dots(4, 2), _dots(4, 4)
_d1x2, _d1x4 = _dots(1, 2), _dots(1, 4)
VECTOR_LANES32 = _VECTOR_BYTES // 4
INT16_LANES = 16  # int16 activations a vector of the integer products (256 bits)
# Rows of ``a`` per pass over the weights in :func:`matvec`: four weight rows times 4 rows
# of ``a`` keep 16 accumulators, 4 weight vectors and a row vector in registers, which fits
# AVX-512's 32 but not AVX2's 16 (2 rows: 13).
_ROWS_PER_PASS = 4 if AVX512 else 2


@jit()
def vecmat(a, r0, r1, w, c0, c1, out):
    """``out[r, c0:c1] = a[r, :] @ w[:, c0:c1]`` for ``r0 <= r < r1``: the product of a few
    rows with unpacked ``w [K,N]`` read along its rows (the backward's ``dg @ w_hh`` for one
    step of one or two rows, where packing ``w`` would cost more than the product). Each
    row of ``w`` is read once for all rows of ``a``, whose sums stay in cache."""
    K = w.shape[0]
    n = c1 - c0
    for r in range(r0, r1):
        o = out[r, c0:c1]
        for j in range(n):
            o[j] = 0
    for k in range(K):
        wk = w[k, c0:c1]
        for r in range(r0, r1):
            s = a[r, k]
            o = out[r, c0:c1]
            for j in range(n):
                o[j] += s * wk[j]


@jit()
def matvec(a, r0, r1, w, j0, j1, out, back=False):
    """``out[r, j] = a[r, :] @ w[j, :]`` for ``r0 <= r < r1``, ``j0 <= j < j1``: the
    product of a few rows on unpacked ``w [M,K]`` (same contract as
    :func:`._math.matmul_nt`), bound by reading ``w``: ``_ROWS_PER_PASS`` rows of ``a``
    a pass over it. ``back``: walk ``w``'s rows from the last (a time loop alternates, as
    :func:`gemm_panels` does, so that a step starts on the rows the previous one read
    last, still in cache). Low-precision ``w`` takes ``a`` as :func:`_dots` says, with rows
    a whole number of its steps."""
    K = w.shape[1]
    if w.itemsize < a.itemsize or w.itemsize == 1:  # (low-precision weights: see _dots)
        if K % (INT16_LANES if w.itemsize == 1 else 2 * VECTOR_LANES32) != 0:
            raise ValueError("matvec: low-precision rows must be a whole number of chunks")
    elif K % (VECTOR_LANES32 if a.itemsize == 4 else VECTOR_LANES32 // 2) != 0:
        matmul_nt(a, r0, r1, w, j0, j1, out)
        return
    lda = a.strides[0] // a.itemsize
    ldw = w.strides[0] // w.itemsize
    ldo = out.strides[0] // out.itemsize
    r = r0
    while r < r1:  # up to _ROWS_PER_PASS rows of ``a`` share each load of the weights
        vecs = 4 if r + 4 <= r1 and _ROWS_PER_PASS == 4 else (2 if r + 2 <= r1 else 1)
        _dot_rows(a, r * lda, lda, w, j0, j1, ldw, out, r * ldo, ldo, K, vecs, back)
        r += vecs


@jit()
def _dot_rows(a, a_off, lda, w, j0, j1, ldw, out, o_off, ldo, K, vecs, back):
    """``vecs`` (1, 2 or 4) rows of :func:`matvec`'s product, weight rows four at a time
    (from ``j0``, or from the last group of four when ``back``), then the rest one by one."""
    size = 8 if vecs == 1 else 4  # (one row of a: eight accumulators hide FMA latency)
    groups = (j1 - j0) // size
    for i in range(groups):
        j = j0 + size * (groups - 1 - i if back else i)
        if vecs == 4:
            _d4x4(a, a_off, lda, w, j * ldw, ldw, out, o_off + j, ldo, K)
        elif vecs == 2:
            _d4x2(a, a_off, lda, w, j * ldw, ldw, out, o_off + j, ldo, K)
        else:
            _d8(a, a_off, lda, w, j * ldw, ldw, out, o_off + j, ldo, K)
    j = j0 + size * groups
    if vecs == 1 and j + 4 <= j1:
        _d4(a, a_off, lda, w, j * ldw, ldw, out, o_off + j, ldo, K)
        j += 4
    while j < j1:
        if vecs == 4:
            _d1x4(a, a_off, lda, w, j * ldw, ldw, out, o_off + j, ldo, K)
        elif vecs == 2:
            _d1x2(a, a_off, lda, w, j * ldw, ldw, out, o_off + j, ldo, K)
        else:
            _d1(a, a_off, lda, w, j * ldw, ldw, out, o_off + j, ldo, K)
        j += 1
