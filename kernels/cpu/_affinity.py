"""Keep the threads of one kernel call on different CPUs.

A thread woken by another is often placed on the waker's CPU (the scheduler's wake-affine
heuristic) and stays there for milliseconds while the other CPU idles, so a call split over
two threads can run slower than one (docs/performance-notes.md, "Threads"). So the
kernels' helper threads - Numba's workers and the GEMM pool - are pinned once, each to its
own CPU of the process's allowed set, and the calling thread is held on the remaining one
for the duration of a multi-threaded call, then given back its own affinity.
Set FASTRNN_PIN_THREADS=0 to leave placement to the OS.

Only calls from one Python thread (the first to make a multi-threaded call) are pinned:
Numba's OpenMP runtime gives each calling thread its own team, whose workers would inherit
a pinned caller's one-CPU mask, and two callers pinned to the same CPU would share it.
Calls from other threads run with the placement the OS gives them.
"""

import contextlib
import os
import threading

import numpy as np
from numba import prange

from . import _blas
from ._jit import jit
from ._sync import set_thread_affinity

_SETTINGS = {"1": True, "0": False}
_pinned_team = None
_owner = None  # the Python thread whose calls are pinned
_owner_lock = threading.Lock()
_local = threading.local()  # the caller's own CPU set while its call is pinned


def _after_fork_in_child():
    """A forked child has none of the parent's threads: pin the child's own afresh."""
    global _pinned_team, _owner, _owner_lock
    _pinned_team, _owner, _owner_lock = None, None, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def usable_cpus():
    """How many CPUs the calling thread may use: its own set, not the one CPU it is held
    on while a pinned call runs."""
    mask = getattr(_local, "mask", None)
    if mask is None:
        try:
            mask = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # not Linux
            return os.cpu_count() or 1
    return len(mask)


@jit(parallel=True)
def _pin_team(masks, rc):
    for p in prange(masks.shape[0]):
        rc[p] = set_thread_affinity(masks[p])


def _mask(cpu):
    words = np.zeros(cpu // 64 + 1, np.uint64)
    words[cpu // 64] = np.uint64(1) << np.uint64(cpu % 64)
    return words


def _enabled():
    """FASTRNN_PIN_THREADS: "1" (the default) or "0"; anything else is an error."""
    value = os.environ.get("FASTRNN_PIN_THREADS", "1")
    if value not in _SETTINGS:
        raise ValueError(f"FASTRNN_PIN_THREADS must be '0' (leave thread placement to the "
                         f"OS) or '1' (pin the cpu backend's threads), got {value!r}")
    return _SETTINGS[value] and hasattr(os, "sched_setaffinity")


def plan(threads, allowed=None):
    """The CPU for each of ``threads`` threads (index 0: the caller), or None when the
    process may not use that many CPUs or pinning is off. ``allowed``: the caller's CPU set,
    if already known."""
    if threads < 2 or not _enabled():
        return None
    cpus = sorted(os.sched_getaffinity(0) if allowed is None else allowed)
    if len(cpus) < threads:
        return None
    return cpus[:threads]


def _pin_helpers(cpus):
    """Pin Numba's workers (thread k of the team to ``cpus[k]``) and the GEMM pool's threads
    (to ``cpus[1:]``); once per CPU list. The caller's own affinity is left as it was."""
    global _pinned_team
    if _pinned_team == tuple(cpus):
        return
    mine = os.sched_getaffinity(0)
    rc = np.zeros(len(cpus), np.int64)
    try:
        _pin_team(np.stack([_mask(c) for c in cpus]), rc)
    finally:
        os.sched_setaffinity(0, mine)  # the team's thread 0 is the caller
    _blas.pin_pool(cpus[1:])
    _pinned_team = tuple(cpus)


@contextlib.contextmanager
def pinned(threads):
    """Run the body with the caller on its own CPU and ``threads - 1`` helpers on others."""
    global _owner
    mine = cpus = None
    if threads >= 2 and _enabled():
        mine = os.sched_getaffinity(0)
        cpus = plan(threads, mine)
    if cpus is not None:
        if _owner is None:
            with _owner_lock:
                if _owner is None:
                    _owner = threading.get_ident()
        if _owner != threading.get_ident():
            cpus = None
    if cpus is None:
        yield
        return
    _pin_helpers(cpus)
    os.sched_setaffinity(0, {cpus[0]})
    _local.mask = mine
    try:
        yield
    finally:
        _local.mask = None
        os.sched_setaffinity(0, mine)
