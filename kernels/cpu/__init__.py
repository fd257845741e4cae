"""The ``cpu`` backend: Numba-compiled fused kernels behind the kernel contract.

Per layer and direction: the input projection of all ``T*B`` rows is one BLAS GEMM (or,
when the weights are small, or at batch 1-2 when they fit in the threads' L2, computed
inside the loop a few steps at a time, where it stays in cache; for a one-thread call of
a few rows, by the row-dot kernel: see :func:`_projection`); the whole time loop runs in
compiled code (:mod:`._loops`), threads split the batch - or, for batches of 1-2 rows,
calls of a few rows and large ``w_hh`` at moderate batch, the hidden units
(:mod:`._split`); backward walks time in reverse in
compiled code, summing the bias gradients as it goes, then ``dx``, ``dw_ih`` and ``dw_hh``
are single GEMMs over all ``T*B`` rows. The threads of a call are pinned to distinct CPUs
(:mod:`._affinity`); a call too small for two runs on one.
"""

import contextlib
import os
from typing import Any, NamedTuple

import numba
import numpy as np

from . import _compiled, _norm, _norm_split, _stale
from ..cells import get_cell
from ..contract import Sequence as _Seq
from ..contract import State, Weights
from ..gate_grads import input_and_weight_grads
from ..quantize import FORMATS as QUANTIZED_FORMATS
from ..quantize import Quantized, dequantized, is_quantized
from ._affinity import plan as _pin_plan
from ._affinity import pinned, usable_cpus
from ._alloc import empty
from ._args import Biases, Grads, Outputs, Plan, Projection, Saved, Sequence, UnitWeights
from ._alloc import empty_cache
from ._alloc import info as cache_info
from ._alloc import set_limit as set_cache_limit
from ._blas import ONE_THREAD_GEMM, matmul, single_threaded_blas
from ._caches import L2_BYTES
from ._fork import child_safe
from ._fpu import flush_denormals, restore
from ._gemm import (PAIR_COLUMNS, pack, pack_blocks, pack_column_blocks, pack_pairs,
                    panel_width)
from ._jit import CACHE, num_threads
from ._lowp import BF16_CHUNK, INT8_CHUNK, project
from ._jit import start as wait_settings
from ._loops import backward_loop, forward_loop
from ._math import CELL_IDS
from ._split import (backward_loop_split, forward_loop_serial, forward_loop_split,
                     forward_rows)
from ._warm import warm as _warm
from ._warm import warm_norm as _warm_norm
from ._warm import warm_quantized as _warm_quantized

__all__ = ["forward", "backward", "cache_dir", "num_threads", "pinned_cpus",
           "wait_settings", "L2_BYTES", "empty_cache", "cache_info", "set_cache_limit",
           "warm", "compiled_kernels"]


_SEQUENCE = _Seq()  # (every row all T steps, forwards)

_cache_checked = False


def _fresh_cache():
    """Before the first compiled call of a process: drop cached kernels compiled from other
    sources (:mod:`._stale`)."""
    global _cache_checked
    if not _cache_checked:
        _cache_checked = True
        _stale.clear_if_stale(cache_dir())


def warm(dtype):
    """Compile, or load from the on-disk cache, every kernel in ``dtype``: each loop kind
    once on small arrays (``fastrnn compile``); ``dtype`` ``"int8"`` or ``"bfloat16"``:
    the quantized inference loops of that format (float32 activations)."""
    _fresh_cache()
    wait_settings()  # (the loops below run parallel regions without asking num_threads)
    if dtype in QUANTIZED_FORMATS:
        _warm_quantized(_forward_quantized, dtype)
        return
    _warm(dtype, _forward, _backward, _forward_rows)
    _warm_norm(dtype, forward, backward, _norm_split.forward)


def cache_dir():
    """Where Numba caches the compiled kernels (for ``fastrnn info``), or None."""
    if not CACHE:
        return None
    try:  # Numba's own answer: it may fall back from NUMBA_CACHE_DIR to another place
        return forward_loop._cache._impl.locator.get_cache_path()
    except AttributeError:  # a Numba without that internal: the documented default
        return os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "__pycache__")


def compiled_kernels():
    """``{loop: [dtype, ...]}``: the dtypes the kernel cache holds each loop kind in (every
    cell runs in the same compiled loops); None without a cache, or with an index this
    Numba does not write."""
    if not CACHE:
        return None
    _fresh_cache()
    return _compiled.compiled({
        "batch split": forward_loop, "batch split backward": backward_loop,
        "unit split": forward_loop_split, "unit split backward": backward_loop_split,
        "one thread": forward_loop_serial, "a few rows": forward_rows,
        "layer_norm and zoneout": _norm._forward_rows,
        "layer_norm and zoneout backward": _norm._backward_rows,
        "layer_norm and zoneout, units split": _norm_split._units_part})


def pinned_cpus():
    """The CPUs a multi-threaded call pins its threads to, or None (pinning off or not
    possible: fewer usable CPUs than threads)."""
    return _pin_plan(num_threads())

# Below this many multiply-adds per thread over a whole call, waking a second (sleeping)
# thread costs more than it saves: a one-step cell call stays on one thread
# (docs/performance-notes.md, "Threads").
_MIN_WORK_PER_THREAD = 4_000_000


def _threads_for(x_shape, w_hh_shape):
    """Threads a call may use (for pinning them): one when its multiply-adds, about
    ``T*B*G*H*(I+H)``, are too few to share."""
    (T, B, I), (GH, H) = x_shape, w_hh_shape
    return num_threads() if T * B * GH * (I + H) >= 2 * _MIN_WORK_PER_THREAD else 1


def _chunks(T, B, GH, H):
    """Balanced row-block boundaries ``[threads+1]`` for the batch-split loops."""
    threads = max(1, min(num_threads(), B))
    while threads > 1 and (B // threads) * GH * H * T < _MIN_WORK_PER_THREAD:
        threads -= 1
    return np.asarray([B * k // threads for k in range(threads + 1)], dtype=np.int64)


# When to split the hidden units between threads instead of the batch (:mod:`._split`):
# batches of at most _SPLIT_MAX_BATCH rows, or calls of at most _ROWDOT_MAX_ROWS rows in
# all, when the recurrent weights are big enough to pay for a barrier per step; and batches
# up to _SPLIT_LARGE_MAX_BATCH rows when w_hh is too large for one core's L2 (every
# batch-split thread would stream all of it from L3).
_SPLIT_MAX_BATCH = 2
_ROWDOT_MAX_ROWS = 128
_SPLIT_MIN_WEIGHTS = 64 * 1024
_SPLIT_LARGE_BYTES = 2 * 1024 * 1024
_SPLIT_LARGE_MAX_BATCH = 16
_UNIT_ALIGN = 16  # unit blocks start on whole vectors


# A one-step call (a cell's) of at least this many rows on one thread computes both
# products, ``x @ w_ih.T`` and ``h0 @ w_hh.T``, by BLAS GEMMs and then only the pointwise
# step in compiled code (the ``"step"`` plan): from here on a GEMM beats the row-dot
# kernel by more than its call costs; on two threads, from twice as many rows when w_hh
# is too large for one core's L2 (docs/performance-notes.md, "Cells").
_STEP_GEMM_ROWS = 24
# A call on one thread with at most this many rows computes its input projection with the
# row-dot kernel (:func:`._gemm.matvec`, four rows a pass over ``w_ih``) instead of a BLAS
# GEMM, whose fixed cost dominates there.
_ROWDOT_PROJECTION_ROWS = 16
# The unit-split loops on unpacked weights (batch 1-2, calls of a few rows) compute the
# projection themselves, every few steps, when each thread's rows of w_ih and w_hh
# together fit in half a core's L2 (1 MB on a Xeon with 2 MB, 256 KB on a Zen 3 core).
_UNIT_PROJECTION_STEPS = 8
_UNIT_PROJECTION_BYTES = L2_BYTES // 2


def _rowdot(T, B):
    """Whether the unit-split forward reads ``w_hh`` as it is (the row-dot kernel) rather
    than packing it: at batch 1-2 a step is bound by reading the weights, and for a call of
    a few rows in all (a step of batched generation) packing costs more than it saves
    (docs/performance-notes.md, "Splitting work")."""
    return B <= _SPLIT_MAX_BATCH or T * B <= _ROWDOT_MAX_ROWS


def _unpacked_backward(T, B):
    """Whether the unit-split backward reads ``w_hh`` as it is rather than packing its
    column blocks: for one step of one or two rows, where packing costs more than the
    product; from a few rows or steps on, the packed product's speed pays for the packing
    (docs/performance-notes.md, "Splitting work")."""
    return T == 1 and B <= _SPLIT_MAX_BATCH


def _units_for(cell, T, B, GH, H, itemsize, projected=False):
    """:func:`_unit_split` for ``cell``: None (the batch split) for ``gru_reset_before``,
    whose second product per step needs every unit's ``r * h``, and for an LSTM with a
    projection, whose product needs every unit's ``o * tanh(c')`` (a second barrier a step
    in the unit split, which it does not have)."""
    if get_cell(cell).reset_before or projected:
        return None
    return _unit_split(T, B, GH, H, itemsize)


def _unit_split(T, B, GH, H, itemsize=4):
    """``units [threads+1]`` for the loops of :mod:`._split`, or None to split the batch.
    A call of few rows (:func:`_rowdot`) with too little work to wake a second thread (a
    one-step cell call, a step of generation) gets one block, so that it still reads
    ``w_hh`` as it is instead of packing it."""
    # A call of few rows too small for two threads (checked first, without asking how many
    # there are) or for the threads there are: one block whatever the weights' size,
    # since packing them would cost more than the call.
    few = _rowdot(T, B)
    work = T * B * GH * H
    if few and work < 2 * _MIN_WORK_PER_THREAD:
        return np.asarray([0, H], dtype=np.int64)
    # (never more threads than usable CPUs: they meet every step, and a thread waiting for
    # one that has no CPU would have to yield at every barrier)
    threads = min(num_threads(), usable_cpus(), H // _UNIT_ALIGN)
    enough = work >= threads * _MIN_WORK_PER_THREAD
    if few and (threads < 2 or not enough):
        return np.asarray([0, H], dtype=np.int64)
    small = few and GH * H >= _SPLIT_MIN_WEIGHTS
    large = B <= _SPLIT_LARGE_MAX_BATCH and GH * H * itemsize >= _SPLIT_LARGE_BYTES
    if not (small or large) or threads < 2 or not enough:
        return None
    return _unit_bounds(H, threads)


def _unit_bounds(H, threads):
    """``units [threads+1]``: ``H`` units in balanced blocks starting on whole vectors."""
    bounds = [_UNIT_ALIGN * round(H * k / threads / _UNIT_ALIGN) for k in range(threads)]
    return np.asarray(bounds + [H], dtype=np.int64)


# The batch-split forward computes the input projection inside the time loop (one product
# every few steps, see :mod:`._loops`) when both weight matrices together are at most this
# size; with larger weights the one big GEMM before the loop is faster
# (docs/performance-notes.md, "Where the input projection is computed").
_FUSE_MAX_BYTES = 512 * 1024


def _fuse_projection(I, GH, H, itemsize):
    """Whether the batch-split forward computes the input projection inside the loop."""
    return (I + H) * GH * itemsize <= _FUSE_MAX_BYTES


# Inside the loop the projection is one product every few steps, over those steps' rows
# copied together, so that a thread's few rows a step still fill the microkernel's row
# tiles; fewer steps where a product would exceed _PROJECTION_ROWS rows a thread.
_PROJECTION_STEPS = 8
_PROJECTION_ROWS = 256


def _projection_steps(B, blocks):
    """Steps per input-projection product in the batch-split forward (``B`` rows in
    ``blocks`` balanced row blocks, see :func:`_chunks`)."""
    rows = max(1, -(-B // blocks))  # the largest block (an empty batch: blocks of 0 rows)
    return max(1, min(_PROJECTION_STEPS, _PROJECTION_ROWS // rows))


def _projection(T, B, I, GH, H, itemsize, threads, units):
    """Where the forward computes the input projection: ``"batch"`` (inside the batch-split
    loop, see :func:`_fuse_projection`), ``"units"`` (inside the unit-split loop on
    unpacked weights, each thread for its units every ``_UNIT_PROJECTION_STEPS`` steps,
    with the row-dot kernel, when w_ih stays in the thread's L2 beside its w_hh or the call
    is one step: the call needs no BLAS GEMM and no GEMM thread), ``"rowdot"`` (the row-dot
    kernel before the serial loop, both in one compiled call: a one-thread call of a few
    rows), ``"step"`` (a one-step call of many rows: both products by BLAS GEMMs, see
    :data:`_STEP_GEMM_ROWS`) or ``"gemm"`` (one BLAS GEMM before the loop).

    The lines between them are measured in docs/performance-notes.md, "Where the input
    projection is computed"."""
    if units is None:
        return "batch" if _fuse_projection(I, GH, H, itemsize) else "gemm"
    if T == 1 and B >= _STEP_GEMM_ROWS and (threads == 1 or (
            B >= 2 * _STEP_GEMM_ROWS and GH * H * itemsize >= _SPLIT_LARGE_BYTES)):
        return "step"
    # (a call of one step projects in the loop whatever the weights' size: no later step
    # needs w_hh in L2, and a GEMM of a few rows mostly packs the weights)
    fits = (I + H) * GH * itemsize <= (units.size - 1) * _UNIT_PROJECTION_BYTES
    if threads > 1 and _rowdot(T, B) and (fits or T == 1):
        return "units"
    if threads == 1 and T * B <= _ROWDOT_PROJECTION_ROWS:
        return "rowdot"
    return "gemm"


@contextlib.contextmanager
def _at_most(threads):
    """Run the body's compiled code on at most ``threads`` threads (Numba's setting is per
    calling thread; the caller's is put back). A call too small for two threads then runs
    its parallel loops on the caller alone instead of waking Numba's others."""
    before = num_threads()
    if threads >= before:
        yield
        return
    numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def _writable(a):
    """``a``, or a copy of it when it is read-only (a memory-mapped file, a buffer): compiled
    code is specialised on whether an array is writable, and read-only arguments would
    compile every loop once more."""
    return a if a is None or a.flags.writeable else a.copy()


def _all_writable(group):
    """A :class:`Weights` or :class:`State` whose arrays are all writable (see
    :func:`_writable`): the group itself when they are."""
    for a in group:
        if a is not None and not a.flags.writeable:
            return type(group)(*map(_writable, group))
    return group


@child_safe
def forward(cell, x, state, weights, seq=_SEQUENCE, training=True, zoneout=None):
    """Kernel contract forward (:mod:`fastrnn.kernels.contract`); arrays are NumPy, of
    ``x``'s dtype. Quantized weights (inference only): see :func:`_forward_quantized`."""
    _fresh_cache()
    if is_quantized(weights):
        if training:
            raise ValueError("weights: quantized weights run inference only (training=False)")
        return _forward_quantized(cell, _writable(x), _all_writable(state), weights, seq,
                                  zoneout)
    x, w, state = _writable(x), _all_writable(weights), _all_writable(state)
    if w.ln_ih is not None or zoneout is not None:  # (a step's whole row: _norm)
        units = None if training else _normed_units(cell, x.shape, w)
        if units is not None:
            return _in_threads(units.size - 1, _norm_split.forward, cell, x, state, w, seq,
                               zoneout, units)
        return _normed(_norm.forward, x.shape, w.w_hh.shape, cell, x, state, w, seq,
                       training, zoneout)
    (T, B, I), (GH, H) = x.shape, w.w_hh.shape
    threads = _threads_for(x.shape, w.w_hh.shape)
    units = _units_for(cell, T, B, GH, H, x.dtype.itemsize, w.w_hr is not None)
    plan = Plan(threads, units, _projection(T, B, I, GH, H, x.dtype.itemsize, threads, units))
    fpu = flush_denormals()
    try:
        if plan.projection == "rowdot":
            # no BLAS and no parallel region: nothing to hold back or pin (a step of
            # generation), and one compiled call
            return _forward_rows(cell, x, state, w, seq, training, plan.units)
        if plan.projection == "step":
            return _forward_step(cell, x, state, w, seq, training, threads)
        with single_threaded_blas(), _at_most(threads), pinned(threads):
            return _forward(cell, x, state, w, seq, training, plan)
    finally:
        restore(fpu)


@child_safe
def backward(cell, saved, dy, dstate_n):
    """Kernel contract backward (:mod:`fastrnn.kernels.contract`)."""
    _fresh_cache()
    dy, dstate_n = _writable(dy), _all_writable(dstate_n)
    if isinstance(saved, _norm.Kept):
        return _normed(_norm.backward, saved.x.shape, saved.weights.w_hh.shape, cell, saved,
                       dy, dstate_n)
    w_hh = saved.weights.w_hh
    (T, B, I), GH = saved.x.shape, w_hh.shape[0]
    threads = _threads_for(saved.x.shape, w_hh.shape)
    units = _units_for(cell, T, B, GH, GH // get_cell(cell).gates, saved.x.dtype.itemsize,
                       saved.weights.w_hr is not None)
    # (a call whose GEMMs OpenBLAS runs on the caller anyway - a small cell step - leaves
    # its thread setting alone: two library calls, ~10 us)
    quiet = T * B * GH * max(I, w_hh.shape[1]) <= ONE_THREAD_GEMM
    fpu = flush_denormals()
    try:
        with (contextlib.nullcontext() if quiet else single_threaded_blas()), \
                _at_most(threads), pinned(threads):
            return _backward(cell, saved, dy, dstate_n, units)
    finally:
        restore(fpu)


# A layer-normalised or zoneout call of at most this many rows in all (T * B: a cell's
# step, a few steps), or of one or two rows a step, reads its weights as they are in the
# per-step products instead of packing them: packing costs more than it saves there
# (docs/performance-notes.md, "LayerNorm cells and zoneout").
_NORM_UNPACKED_ROWS = 16


def _normed(fn, x_shape, w_hh_shape, *args):
    """``fn(*args, chunks, packed)`` of :mod:`._norm` with the batch split's threads and
    setting."""
    (T, B, _), (GH, S) = x_shape, w_hh_shape
    packed = B > _SPLIT_MAX_BATCH and T * B > _NORM_UNPACKED_ROWS
    return _in_threads(_threads_for(x_shape, w_hh_shape), fn, *args, _chunks(T, B, GH, S),
                       packed)


def _in_threads(threads, fn, *args):
    """``fn(*args)`` on ``threads`` threads, BLAS on one, denormals flushed."""
    fpu = flush_denormals()
    try:
        with single_threaded_blas(), _at_most(threads), pinned(threads):
            return fn(*args)
    finally:
        restore(fpu)


def _normed_units(cell, x_shape, w):
    """The unit blocks for an inference call of :mod:`._norm_split`, or None for the batch
    split of :mod:`._norm`: calls of one or two rows a step (or a few rows in all), where
    the batch split would leave threads idle, on weights large enough to share
    (:func:`_unit_split`); not the reset-before GRU or a projection (a second product a
    step over every unit's result)."""
    T, B, _ = x_shape
    GH = w.w_hh.shape[0]
    H = GH // get_cell(cell).gates
    if not _rowdot(T, B):
        return None
    units = _units_for(cell, T, B, GH, H, w.w_hh.dtype.itemsize, w.w_hr is not None)
    return units if units is not None and units.size > 2 else None


def _peep(peepholes, dt):
    """The peephole weights as the loops take them: ``[3,H]``, or ``[0,0]`` for a cell
    without."""
    return np.empty((0, 0), dt) if peepholes is None else np.ascontiguousarray(peepholes)


def _bias_pair(b_ih, b_hh, GH, dt):
    """``b_ih, b_hh`` as the loops take them (zeros for a layer without bias)."""
    if b_ih is None:
        zeros = np.zeros(GH, dt)
        return zeros, zeros
    return b_ih, b_hh


def _biases(b_ih, b_hh, peepholes, GH, dt):
    """:class:`Biases`."""
    b_ih_, b_hh_ = _bias_pair(b_ih, b_hh, GH, dt)
    return Biases(b_ih_, b_hh_, b_ih_ + b_hh_, _peep(peepholes, dt))


_NO_LENGTHS = np.empty(0, np.int64)  # (forward_rows: every row has T steps)


def _sequence(seq, B, T):
    """The contract's :class:`Sequence` as the loops take it: every row's length."""
    lengths = seq.lengths
    lens = np.full(B, T, np.int64) if lengths is None else np.array(lengths, np.int64)
    return Sequence(lens, bool(seq.reverse))


class Kept(NamedTuple):
    """What :func:`backward` needs of a training forward: the input, the weights (as the
    caller gave them), the sequence (:class:`._args.Sequence`), what the loop saved of each
    step (:class:`._args.Saved`), the initial cell state (zeros but for the LSTMs) and the
    peepholes as the loops take them."""

    x: Any
    weights: Weights
    seq: Sequence
    steps: Saved
    c0: Any
    peep: Any


def _forward_rows(cell, x, state, w, seq, training, units, hg=None):
    """A one-thread call of a few rows (the ``"rowdot"`` plan): the whole call in
    :func:`._split.forward_rows`; with ``hg`` (the ``"step"`` plan) ``x [1,B,G*H]`` is
    the input projection, ``hg [B,G*H]`` the recurrent one, and ``w_ih``, ``w_hh`` are
    kept for backward only."""
    spec = get_cell(cell)
    T, B, _ = x.shape
    GH, H = w.w_hh.shape
    dt = x.dtype
    b_ih_, b_hh_ = _bias_pair(w.b_ih, w.b_hh, GH, dt)
    c0_ = state.c if spec.has_cell_state else np.zeros((B, H), dt)
    steps = T if training else 1
    y, h_n, c_n = np.empty((T, B, H), dt), np.empty((B, H), dt), np.empty((B, H), dt)
    saved = Saved(np.empty((steps, B, GH), dt), np.empty((steps, B, H), dt),
                  np.empty((steps if spec.has_cell_state else 1, B, H), dt),
                  np.empty((steps if spec.family == "gru" else 1, B, H), dt))
    peep = _peep(w.peepholes, dt)
    if hg is None:
        w_ih_, w_hh_, hg = w.w_ih, w.w_hh, np.empty((B, GH), dt)
    else:  # (no rows: the products are given)
        w_ih_, w_hh_ = np.empty((0, x.shape[2]), dt), np.empty((0, H), dt)
    # (contiguous, as the batch-split loop takes them: a strided state would compile
    # forward_rows once more)
    forward_rows(CELL_IDS[spec.name], np.ascontiguousarray(x), np.ascontiguousarray(state.h),
                 np.ascontiguousarray(c0_), np.ascontiguousarray(w_ih_),
                 np.ascontiguousarray(w_hh_), b_ih_, b_hh_, peep,
                 _NO_LENGTHS if seq.lengths is None else np.array(seq.lengths, np.int64),
                 bool(seq.reverse), units, y, h_n, c_n, *saved, hg)
    keep = None
    if training:
        keep = Kept(x, w, _sequence(seq, B, T), saved, c0_, peep)
    return y, State(h_n, c_n if spec.has_cell_state else None), keep


def _forward_step(cell, x, state, w, seq, training, threads):
    """A one-step call of many rows (the ``"step"`` plan): ``x @ w_ih.T`` and ``h0 @
    w_hh.T`` by BLAS (split over the threads when there are several), then the pointwise
    step in one compiled call."""
    B, GH = x.shape[1], w.w_hh.shape[0]
    dt = x.dtype
    xg, hg = np.empty((1, B, GH), dt), np.empty((B, GH), dt)
    if threads > 1:
        with single_threaded_blas(), _at_most(threads), pinned(threads):
            matmul(x[0], w.w_ih.T, xg[0])
            matmul(state.h, w.w_hh.T, hg)
    else:  # (OpenBLAS held at one thread, unless it keeps products this small on one)
        quiet = B * GH * max(x.shape[2], w.w_hh.shape[1]) <= ONE_THREAD_GEMM
        with contextlib.nullcontext() if quiet else single_threaded_blas():
            np.matmul(x[0], w.w_ih.T, out=xg[0])
            np.matmul(state.h, w.w_hh.T, out=hg)
    units = np.asarray([0, w.w_hh.shape[1]], dtype=np.int64)
    y, state_n, keep = _forward_rows(cell, xg, state, w, seq, training, units, hg)
    if keep is not None:  # (backward needs the input, not its projection)
        keep = keep._replace(x=x)
    return y, state_n, keep


# Rows of the low-precision products are whole chunks of this many elements (_lowp)
_QUANTIZED_CHUNK = max(INT8_CHUNK, BF16_CHUNK)


def _fused_quantized(cell, w, T, B, I, S):
    """Whether a quantized call runs the low-precision unit-split loop, reading ``w_hh``'s
    values as they are each step: where the float32 plan splits the units too (batches of
    1-2 rows, calls of a few rows, and batches up to 16 rows when ``w_hh`` in float32 is
    2 MB or more), a step is bound by reading the weights. Larger batches are bound by
    the products' arithmetic, which the float32 kernels on the weights read back for the
    call do faster (docs/performance-notes.md, "Quantized inference"); so do the cells and
    options that loop does not run (LayerNorm, a projection, the reset-before GRU) and rows
    that are not whole chunks of the low-precision products."""
    GH = w.w_hh.shape[0]
    return (isinstance(w.w_hh, Quantized) and w.ln_ih is None and w.w_hr is None
            and not get_cell(cell).reset_before and T * B > 0
            and S % _QUANTIZED_CHUNK == 0 and I % _QUANTIZED_CHUNK == 0
            and _unit_split(T, B, GH, S) is not None)


def _batch_quantized(w, I, S):
    """Whether a quantized call that :func:`_fused_quantized` leaves runs the batch-split
    loop on int8 panels (:func:`._gemm.pack_pairs`: twice float32's multiply-adds an
    instruction): int8 weights without LayerNorm, rows of an even length; bfloat16 has no
    faster arithmetic than float32's here, so it runs the float32 kernels on the weights
    read back."""
    int8 = [isinstance(a, Quantized) and a.format == "int8" for a in (w.w_ih, w.w_hh)]
    float_ih = not isinstance(w.w_ih, Quantized)  # (Weights made by hand may mix kinds)
    return (int8[1] and (int8[0] or float_ih) and w.ln_ih is None and I % 2 == 0
            and S % 2 == 0)


def _values_and_scale(w, dt):
    """A weight matrix as the quantized loops take it: its values (int8, bfloat16's
    ``uint16`` or float) and int8's row scales (else empty)."""
    if not isinstance(w, Quantized):
        return np.ascontiguousarray(w), np.empty(0, dt)
    return w.values, np.empty(0, dt) if w.scale is None else w.scale


def _forward_quantized(cell, x, state, w, seq, zoneout, threads=None):
    """Inference on quantized weights (:mod:`fastrnn.kernels.quantize`): the results of the
    float32 layer with the weights read back, computed by the low-precision unit-split loop
    (:func:`_fused_quantized`), the batch-split loop on int8 panels
    (:func:`_batch_quantized`), or else by the float32 kernels on the weights read back
    for the call. ``threads``: the threads to use instead of the call's size's (compiling
    ahead of time, :mod:`._warm`)."""
    (T, B, I), (GH, S) = x.shape, w.w_hh.shape
    spec = get_cell(cell)
    H = GH // spec.gates
    fused = zoneout is None and _fused_quantized(cell, w, T, B, I, S)
    if not fused and zoneout is None and _batch_quantized(w, I, S):
        if w.w_hr is not None:  # (the projection's product stays float32)
            w = w._replace(w_hr=w.w_hr.dequantize())
        # (the input projection in the loop on int8 panels too: at C4i's shape 40 ms
        # against 50 with a float32 BLAS GEMM before it)
        threads = threads or _threads_for(x.shape, w.w_hh.shape)
        plan = Plan(threads, None, "batch")
        fpu = flush_denormals()
        try:
            with single_threaded_blas(), _at_most(threads), pinned(threads):
                return _forward(cell, x, state, w, seq, False, plan)
        finally:
            restore(fpu)
    if not fused:
        return forward(cell, x, state, dequantized(w), seq, False, zoneout)
    threads = min(threads or _threads_for(x.shape, w.w_hh.shape), usable_cpus(),
                  H // _UNIT_ALIGN)
    units = _unit_bounds(H, threads) if threads > 1 else np.asarray([0, H], np.int64)
    threads = units.size - 1
    dt = x.dtype
    fpu = flush_denormals()
    try:
        with single_threaded_blas(), _at_most(threads), pinned(threads):
            xg = empty((T, B, GH), dt)
            x2 = np.ascontiguousarray(x).reshape(T * B, I)
            w_ih, w_ih_scale = _values_and_scale(w.w_ih, dt)
            if threads == 1:  # (else each thread projects for its units in the loop)
                project(x2, w_ih, w_ih_scale, xg.reshape(T * B, GH))
            bias = _biases(w.b_ih, w.b_hh, w.peepholes, GH, dt)
            lens = _sequence(seq, B, T)
            y, c_n = empty((T, B, H), dt), np.empty((B, H), dt)
            c_n[...] = state.c if spec.has_cell_state else 0
            hbuf = np.empty((2, B, H), dt)
            hbuf[0] = state.h
            saved = Saved(empty((1, B, GH), dt), empty((1, B, H), dt), empty((1, B, H), dt),
                          empty((1, B, H), dt))
            w_hh, w_hh_scale = _values_and_scale(w.w_hh, dt)
            weights = UnitWeights(w_hh, np.empty((0, 1, 1), dt), np.zeros(1, np.int64),
                                  w_hh_scale)
            hg = np.empty((B, GH), dt)
            if threads == 1:
                forward_loop_serial(CELL_IDS[spec.name], xg, weights, bias, hbuf, c_n, hg,
                                    lens, units, y, saved)
            else:
                proj = Projection(xg, x2, w_ih, _UNIT_PROJECTION_STEPS, w_ih_scale)
                forward_loop_split(CELL_IDS[spec.name], proj, weights, bias, hbuf, c_n, hg,
                                   lens, units, np.zeros(3, np.int64), y, saved)
            h_n = hbuf[T % 2].copy()
    finally:
        restore(fpu)
    return y, State(h_n, c_n if spec.has_cell_state else None), None


def _panels(w, blocks, dt):
    """``(wp, starts, scale)``: row blocks of ``w`` packed for the batch-split loop, float
    (:func:`._gemm.pack_blocks`) or int8 quantized (:func:`._gemm.pack_pairs`, with its
    rows' scales in the panels' column order; empty for float)."""
    if not isinstance(w, Quantized):
        wp, starts = pack_blocks(w, blocks)
        return wp, starts, np.empty(0, dt)
    wp, starts = pack_pairs(w.values, blocks)
    scale = np.zeros(starts[-1] * PAIR_COLUMNS, np.float32)
    for (lo, hi), first in zip(blocks, starts):
        scale[first * PAIR_COLUMNS:first * PAIR_COLUMNS + hi - lo] = w.scale[lo:hi]
    return wp, starts, scale


def _forward(cell, x, state, w, seq, training, plan):
    spec = get_cell(cell)
    w_ih, w_hh, w_hr = w.w_ih, w.w_hh, w.w_hr
    T, B, I = x.shape
    GH, S = w_hh.shape  # S: the state's size (H, or the projection's)
    H = GH // spec.gates
    dt = x.dtype
    units, projection = plan.units, plan.projection
    wx_scale = np.empty(0, dt)
    if projection == "batch":
        xg = np.empty((0, B, GH), dt)
        wx, _, wx_scale = _panels(w_ih, [(0, GH)], dt)
    else:
        xg, wx = empty((T, B, GH), dt), np.empty((0, 1, 1), dt)
        if isinstance(w_ih, Quantized):  # (a BLAS GEMM below, on the weights read back)
            w_ih = w_ih.dequantize(empty((GH, I), dt))
    if projection == "units":  # (the row-dot kernel reads rows with unit stride)
        x2, w_ih2 = np.ascontiguousarray(x).reshape(T * B, I), np.ascontiguousarray(w_ih)
    else:
        x2, w_ih2 = np.empty((0, I), dt), np.empty((0, I), dt)
    if projection == "gemm":
        matmul(x.reshape(T * B, I), w_ih.T, xg.reshape(T * B, GH))
    bias = _biases(w.b_ih, w.b_hh, w.peepholes, GH, dt)
    lens = _sequence(seq, B, T)
    c0_ = state.c if spec.has_cell_state else np.zeros((B, H), dt)
    steps = T if training else 1
    y = empty((T, B, S), dt)
    h_n = np.empty((B, S), dt)
    c_n = np.empty((B, H), dt)
    saved = Saved(acts=empty((steps, B, GH), dt), h_prev=empty((steps, B, S), dt),
                  c_all=empty((steps if spec.has_cell_state else 1, B, H), dt),
                  hn_all=empty((steps if spec.family == "gru" or w_hr is not None else 1,
                                B, H), dt))
    if units is None:
        x_steps = np.ascontiguousarray(x) if projection == "batch" else xg  # (else unread)
        chunks = _chunks(T, B, GH, H)
        if spec.reset_before:  # r, z panels, then n's (a second product, over r * h)
            wp, starts, w_scale = _panels(w_hh, [(0, 2 * H), (2 * H, 3 * H)], dt)
            cols = PAIR_COLUMNS if isinstance(w_hh, Quantized) else panel_width(dt)
            gate_at, second = (0, H, int(starts[1]) * cols, 0), int(starts[1])
        else:
            wp, _, w_scale = _panels(w_hh, [(0, GH)], dt)
            gate_at, second = (0, H, 2 * H, 3 * H), wp.shape[0]
        wr = pack(w_hr, transpose=True) if w_hr is not None else np.empty((0, 1, 1), dt)
        proj = Projection(xg, x_steps, wx, _projection_steps(B, chunks.size - 1), wx_scale)
        forward_loop(CELL_IDS[spec.name], proj, wp, gate_at, second, bias,
                     np.ascontiguousarray(state.h), np.ascontiguousarray(c0_), lens, chunks,
                     Outputs(y, h_n, c_n), saved, wr, w_scale)
    else:
        hbuf = np.empty((2, B, H), dt)
        hbuf[0] = state.h
        c_n[...] = c0_
        G = GH // H
        if _rowdot(T, B):
            wp, starts = np.empty((0, 1, 1), dt), np.zeros(1, np.int64)
            hg = np.empty((B, GH), dt)
        else:
            wp, starts = pack_blocks(w_hh, [(g * H + units[q], g * H + units[q + 1])
                                            for q in range(units.size - 1) for g in range(G)])
            hg = np.empty((B, starts[-1] * panel_width(dt)), dt)
        weights = UnitWeights(np.ascontiguousarray(w_hh), wp, starts, np.empty(0, dt))
        if plan.threads == 1:
            forward_loop_serial(CELL_IDS[spec.name], xg, weights, bias, hbuf, c_n, hg, lens,
                                units, y, saved)
        else:
            per = _UNIT_PROJECTION_STEPS if projection == "units" else 0
            forward_loop_split(CELL_IDS[spec.name],
                               Projection(xg, x2, w_ih2, per, np.empty(0, dt)), weights,
                               bias, hbuf, c_n, hg, lens, units, np.zeros(3, np.int64), y,
                               saved)
        h_n[...] = hbuf[T % 2]
    keep = Kept(x, w, lens, saved, c0_, bias.peep) if training else None
    return y, State(h_n, c_n if spec.has_cell_state else None), keep


def _backward(cell, saved, dy, dstate_n, units):
    """The backward of :func:`backward`; ``units``: the unit blocks of the unit-split loop,
    or None for the batch split."""
    spec = get_cell(cell)
    x, kept = saved.x, saved.steps
    w_ih, w_hh, w_hr = saved.weights.w_ih, saved.weights.w_hh, saved.weights.w_hr
    dh_n, dc_n = dstate_n
    T, B, I = x.shape
    GH, S = w_hh.shape
    H = GH // spec.gates
    dt = x.dtype
    dh_n = np.zeros((B, S), dt) if dh_n is None else np.ascontiguousarray(dh_n)
    dc_n = np.zeros((B, H), dt) if dc_n is None else np.ascontiguousarray(dc_n)
    dgh = empty((T, B, GH), dt)  # the loop writes every step, padding included
    dgx = empty((T, B, GH), dt) if spec.family == "gru" else dgh
    dhs = empty((T if w_hr is not None else 0, B, S), dt)
    if units is None:
        chunks = _chunks(T, B, GH, H)
        grads = Grads(dgx, dgh, np.empty((B, S), dt), np.empty((B, H), dt),
                      np.zeros((chunks.size - 1, GH + 3 * H), dt), dhs)
        w_n = (pack(np.ascontiguousarray(w_hh[2 * H:]), transpose=False)
               if spec.reset_before else np.empty((0, 1, panel_width(dt)), dt))
        wr = (pack(w_hr, transpose=False) if w_hr is not None
              else np.empty((0, 1, panel_width(dt)), dt))
        backward_loop(CELL_IDS[spec.name], pack(w_hh, transpose=False), w_n,
                      np.ascontiguousarray(dy), dh_n, dc_n, saved.c0, saved.seq, chunks,
                      kept, grads, saved.peep, wr)
    else:
        grads = Grads(dgx, dgh, dh_n.copy(), dc_n.copy(), np.zeros((1, GH + 3 * H), dt), dhs)
        direct = np.zeros((B, H), dt)
        blas_dh = T == 1 and B > _SPLIT_MAX_BATCH  # (one step of several rows)
        if blas_dh:  # the loop leaves dh0 to the GEMM below (w_hh of no rows)
            wp, starts = np.empty((0, 1, panel_width(dt)), dt), np.zeros(1, np.int64)
            dhp = np.empty((0, H), dt)
        elif _unpacked_backward(T, B):
            wp, starts = np.empty((0, 1, panel_width(dt)), dt), np.zeros(1, np.int64)
            dhp = np.empty((B, H), dt)
        else:
            wp, starts = pack_column_blocks(w_hh, [(units[q], units[q + 1])
                                                   for q in range(units.size - 1)])
            dhp = np.empty((B, starts[-1] * panel_width(dt)), dt)
        backward_loop_split(CELL_IDS[spec.name],
                            UnitWeights(np.empty((0, H), dt) if blas_dh
                                        else np.ascontiguousarray(w_hh), wp, starts,
                                        np.empty(0, dt)),
                            np.ascontiguousarray(dy), grads.dh0, grads.dc0, saved.c0,
                            saved.seq, units, np.zeros(3, np.int64), kept, grads, dhp,
                            direct, saved.peep)
        if blas_dh:
            dh0 = matmul(dgh[0], w_hh, np.empty((B, H), dt))
            dh0 += direct
            steps = saved.seq.lengths > 0  # (a row of no step passes dh_n through)
            np.copyto(grads.dh0, dh0, where=steps[:, None])
    # (the loops summed the bias gradients: the shared helper gets has_bias=False)
    dx, dw_ih, dw_hh, _, _ = input_and_weight_grads(
        np, matmul, dgx, dgh, x, kept.h_prev, w_ih, False, spec.name == "gru", empty,
        rh=kept.hn_all if spec.reset_before else None)
    sums = grads.db.sum(axis=0)
    dpeep = sums[GH:].reshape(3, H).copy() if spec.peepholes else None
    dw_hr = None
    if w_hr is not None:  # dw_hr = sum dh' (o * tanh(c'))^T
        dw_hr = matmul(dhs.reshape(T * B, S).T, kept.hn_all.reshape(T * B, H),
                       np.empty((S, H), dt))
    db_ih = db_hh = None
    if saved.weights.b_ih is not None:
        db_ih, db_hh = sums[:GH].copy(), sums[:GH].copy()
        if spec.name == "gru":  # b_hn sits inside r * (.): its gradient is dgh's n block
            db_hh[2 * H:] = sums[GH:GH + H]
    return (dx, State(grads.dh0, grads.dc0 if spec.has_cell_state else None),
            Weights(dw_ih, dw_hh, db_ih, db_hh, dpeep, dw_hr))
