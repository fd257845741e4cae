"""Atomics and a spinning barrier for compiled code (Numba has no CPU atomics of its own).

Used by the hidden-split time loops, where two or more threads share one sequence and meet
once per step: a fork/join per step would cost tens of microseconds, a barrier between
threads that are already running costs a few hundred nanoseconds.
"""

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


# Slots of the int64 ``sync`` array shared by the parts of one call.
ARRIVED, MODE, BARRIER = 0, 1, 2
UNDECIDED, PARALLEL, SOLO = 0, 1, 2
_START_SPINS = 20_000_000  # ~10-50 ms: far longer than any thread's wake-up


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
    while atomic_load(sync, BARRIER) < target:
        pass
