"""Fork safety: a forked child (a ``multiprocessing`` fork pool, a DataLoader worker) can
run the kernels, multi-threaded, and the parent is unaffected.

GNU's OpenMP runtime (Numba's ``omp`` threading layer on Linux) keeps its thread pool per
calling thread. A forked child inherits that pool as data, without its threads, so a
parallel region started by the thread that forked would wait forever for workers that do
not exist; Numba guards against it by terminating such a child. A thread the child creates
has no pool yet and gets a fresh one. So, in a forked child:

- kernel calls from the thread that forked run on one thread the child creates
  (:func:`child_safe`; the hand-off costs tens of microseconds a call);
- Numba's guard is told that the child is a process of its own;
- each module's per-process state (pinned threads, the GEMM thread pool, locks) starts
  afresh through its own ``os.register_at_fork`` hook.

Threads that the child starts itself call the kernels directly. ``spawn`` and
``forkserver`` children are new processes and need none of this.
"""

import ctypes
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

_forked_thread = None  # in a forked child: the ident of the thread that forked
_runner = None  # and the thread its kernel calls run on (started on first use)


def _rearm_numba_guard():
    """Numba's GNU OpenMP layer records the pid that started it and terminates a process
    whose parent has that pid; starting it again records this process instead (its other
    settings are process-wide and already made)."""
    try:
        if numba.threading_layer() != "omp":
            return False
    except ValueError:  # Numba's pool never started in the parent: nothing inherited
        return False
    from numba.np.ufunc import omppool
    if getattr(omppool, "openmp_vendor", None) != "GNU":
        return False
    ctypes.CFUNCTYPE(None, ctypes.c_int)(omppool.launch_threads)(numba.config.NUMBA_NUM_THREADS)
    return True


def _after_fork_in_child():
    global _forked_thread, _runner
    _runner = None
    _forked_thread = threading.get_ident() if _rearm_numba_guard() else None


def _get_runner():
    global _runner
    if _runner is None:
        _runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastrnn-kernels")
    return _runner


def child_safe(fn):
    """Run ``fn`` on a thread of this process's own when called, in a forked child, from
    the thread that forked (see the module's docstring); otherwise call it directly."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _forked_thread is None or threading.get_ident() != _forked_thread:
            return fn(*args, **kwargs)
        return _get_runner().submit(fn, *args, **kwargs).result()
    return wrapper


os.register_at_fork(after_in_child=_after_fork_in_child)
