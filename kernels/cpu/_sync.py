"""Atomics and a barrier for compiled code (Numba has no CPU atomics of its own).

Used by the unit-split time loop (:mod:`._split`), where the threads share one batch and
meet once per step: a fork/join per step would cost tens of microseconds, a barrier between
threads that are already running costs a few hundred nanoseconds.

The barrier spins (with ``pause``) for a bounded time, then yields the CPU between checks:
if the OS has put both threads on one CPU, or a vCPU is preempted, the waiting thread gives
its time slice to the one it waits for instead of burning it.
"""

import ctypes
import ctypes.util

from llvmlite import binding as _ll
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import jit


def _int64_array(arr):
    return isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1


def _pointer(context, builder, sig, args):
    ary = context.make_array(sig.args[0])(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1]])


@intrinsic
def atomic_add(typingctx, arr, idx, val):
    """``old = arr[idx]; arr[idx] += val`` atomically (sequentially consistent)."""
    if not _int64_array(arr):
        return None
    sig = types.int64(arr, types.intp, types.int64)

    def codegen(context, builder, sig, args):
        return builder.atomic_rmw("add", _pointer(context, builder, sig, args), args[2],
                                  "seq_cst")
    return sig, codegen


@intrinsic
def atomic_load(typingctx, arr, idx):
    """``arr[idx]`` read atomically, with acquire ordering."""
    if not _int64_array(arr):
        return None
    sig = types.int64(arr, types.intp)

    def codegen(context, builder, sig, args):
        return builder.load_atomic(_pointer(context, builder, sig, args), "acquire", 8)
    return sig, codegen


@intrinsic
def atomic_cas(typingctx, arr, idx, expected, new):
    """Set ``arr[idx] = new`` if it holds ``expected``; return True when it did."""
    if not _int64_array(arr):
        return None
    sig = types.boolean(arr, types.intp, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        res = builder.cmpxchg(_pointer(context, builder, sig, args), args[2], args[3],
                              "seq_cst", "seq_cst")
        return builder.extract_value(res, 1)
    return sig, codegen


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)


def _register_libc(name):
    """Make a libc function callable by name from compiled (and cached) code. A libc
    without it (sched_setaffinity outside Linux) is skipped: nothing that calls it is
    compiled there (:mod:`._affinity` pins only where ``os.sched_setaffinity`` exists)."""
    fn = getattr(_LIBC, name, None)
    if fn is not None:
        _ll.add_symbol(name, ctypes.cast(fn, ctypes.c_void_p).value)


_register_libc("sched_yield")
_register_libc("sched_setaffinity")


@intrinsic
def cpu_relax(typingctx):
    """One ``pause``: tells the core this is a spin-wait (saves power, frees the pipeline)."""
    def codegen(context, builder, sig, args):
        if "x86" in _ll.get_process_triple():
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def sched_yield(typingctx):
    """Give the CPU to another runnable thread (the libc call)."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()
    return types.none(), codegen


@intrinsic
def set_thread_affinity(typingctx, mask):
    """Pin the calling thread to the CPUs of ``mask`` (a ``uint64`` bit array, CPU k at bit
    k % 64 of word k // 64); returns the call's result (0 on success)."""
    if not (isinstance(mask, types.Array) and mask.dtype == types.uint64 and mask.ndim == 1):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        nbytes = builder.mul(ary.nitems, ir.Constant(ary.nitems.type, 8))
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), [ir.IntType(32), nbytes.type,
                                                             cgutils.voidptr_t]),
            "sched_setaffinity")
        rc = builder.call(fn, [ir.Constant(ir.IntType(32), 0), nbytes,
                               builder.bitcast(ary.data, cgutils.voidptr_t)])
        return builder.sext(rc, ir.IntType(64))
    return types.int64(mask), codegen


# Slots of the int64 ``sync`` array shared by the parts of one call.
ARRIVED, MODE, BARRIER = 0, 1, 2
UNDECIDED, PARALLEL, SOLO = 0, 1, 2
_START_SPINS = 20_000_000  # ~10-50 ms: far longer than any thread's wake-up
# pause takes ~40 cycles on recent Intel cores (~10 on older): a few tens of microseconds,
# longer than the other thread's share of a step, shorter than a scheduler time slice.
_SPINS_BEFORE_YIELD = 2000


@jit()
def start(sync, parts):
    """Meet the other parts before the first barrier. Returns PARALLEL when every part is
    running at once, SOLO for the one part that must do all the work because the others
    did not show up (they were serialised onto one thread), or 0 for a part that must do
    nothing because a SOLO part took its work. Never deadlocks."""
    atomic_add(sync, ARRIVED, 1)
    for _ in range(_START_SPINS):
        if atomic_load(sync, ARRIVED) >= parts:
            atomic_cas(sync, MODE, UNDECIDED, PARALLEL)
            return PARALLEL if atomic_load(sync, MODE) == PARALLEL else 0
        if atomic_load(sync, MODE) != UNDECIDED:
            break
    if atomic_cas(sync, MODE, UNDECIDED, SOLO):
        return SOLO
    return PARALLEL if atomic_load(sync, MODE) == PARALLEL else 0


@jit()
def barrier(sync, parts, generation):
    """The ``generation``-th meeting (1, 2, ...) of ``parts`` running threads."""
    atomic_add(sync, BARRIER, 1)
    target = parts * generation
    spins = 0
    while atomic_load(sync, BARRIER) < target:
        if spins < _SPINS_BEFORE_YIELD:
            cpu_relax()
            spins += 1
        else:
            sched_yield()
