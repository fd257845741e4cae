"""Large GEMMs for the CPU backend without idle BLAS threads spinning beside the kernels.

OpenBLAS's worker threads spin for about 2**28 cycles (~0.1 s) after every multi-threaded
call. On a 2-core machine they then take half a core from the compiled time loop that runs
next (docs/performance-notes.md, "The large GEMMs"). So during a kernel call NumPy's
OpenBLAS is held at one thread, and a GEMM is split (by output rows or columns, or along its
inner dimension) over a small pool of Python threads (NumPy releases the GIL in ``matmul``),
whose idle threads sleep instead of spinning. The user's own thread setting is restored when
the call ends. Where NumPy's BLAS is not an OpenBLAS we can find, ``matmul`` is plain NumPy.
"""

import contextlib
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._fpu import flush_denormals
from ._jit import num_threads
from ._math import outer

_SET_NAMES = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
              "openblas_set_num_threads64_", "openblas_set_num_threads")
_GET_NAMES = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
              "openblas_get_num_threads64_", "openblas_get_num_threads")
# Below this many multiply-adds a GEMM is not worth splitting over threads.
_MIN_SPLIT_WORK = 2_000_000
# OpenBLAS runs a GEMM of at most this many multiply-adds on the calling thread whatever
# its thread setting (interface/gemm.c: 65536 * GEMM_MULTITHREAD_THRESHOLD, 4 by default):
# a call whose products all stay below needs no hold on OpenBLAS's threads.
ONE_THREAD_GEMM = 65536 * 4


def _find_openblas():
    """(set_num_threads, get_num_threads) of the OpenBLAS NumPy loaded, or None."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(np.__file__)))
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(p for p in paths if p.startswith(root) and "numpy" in p):
        lib = ctypes.CDLL(path)
        setter = next((getattr(lib, n) for n in _SET_NAMES if hasattr(lib, n)), None)
        getter = next((getattr(lib, n) for n in _GET_NAMES if hasattr(lib, n)), None)
        if setter is not None and getter is not None:
            setter.argtypes, setter.restype = [ctypes.c_int], None
            getter.argtypes, getter.restype = [], ctypes.c_int
            return setter, getter
    return None


_UNKNOWN = object()
_found = _UNKNOWN  # _find_openblas()'s answer, looked up at the first GEMM


def _openblas():
    global _found
    if _found is _UNKNOWN:
        _found = _find_openblas()
    return _found

_pool = None
_pool_size = 0
_lock = threading.Lock()
_depth = 0
_saved_threads = None


def _after_fork_in_child():
    """A forked child has none of the parent's threads: the pool starts afresh there."""
    global _pool, _pool_size, _lock, _depth
    _pool, _pool_size, _lock, _depth = None, 0, threading.Lock(), 0


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def single_threaded_blas():
    """Hold NumPy's OpenBLAS at one thread for the duration (re-entrant, thread-safe)."""
    global _depth, _saved_threads
    found = _openblas()
    if found is None:
        yield
        return
    setter, getter = found
    with _lock:
        if _depth == 0:
            _saved_threads = getter()
            setter(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                setter(_saved_threads)


def _get_pool(n):
    global _pool, _pool_size
    if _pool is None or _pool_size != n:
        if _pool is not None:
            _pool.shutdown(wait=True)
        # These threads work only for the kernels, which run with denormals flushed.
        _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="fastrnn-gemm",
                                   initializer=flush_denormals)
        _pool_size = n
    return _pool


def on_threads(fn, parts):
    """``fn(*args)`` for every ``args`` of ``parts``: the first on the calling thread, the
    others on the pool's threads (``fn`` compiled without the GIL); returns when all are
    done. For compiled loops whose parts run a whole call each: a Numba parallel region
    would compile the loop a second time as its body, for seconds (docs/performance-notes.md,
    "Compilation"), where a pool thread costs a wake-up a call."""
    if len(parts) == 1:
        fn(*parts[0])
        return
    pool = _get_pool(max(1, num_threads() - 1))
    futures = [pool.submit(fn, *args) for args in parts[1:]]
    try:
        fn(*parts[0])
    finally:
        for f in futures:
            f.result()


def pin_pool(cpus):
    """Pin the pool's threads, one to each of ``cpus`` (see :mod:`._affinity`)."""
    pool = _get_pool(len(cpus))
    todo, barrier = list(cpus), threading.Barrier(len(cpus))

    def pin():
        os.sched_setaffinity(0, {todo.pop()})  # (list.pop is atomic)
        barrier.wait()  # so that every thread takes exactly one task
    for f in [pool.submit(pin) for _ in cpus]:
        f.result()


# A product whose inner dimension is at least this many times its longer outer one, with an
# output of at most _MAX_K_SPLIT_OUT elements, is split along the inner dimension instead.
_K_SPLIT_RATIO = 4
_MAX_K_SPLIT_OUT = 1 << 20


def matmul(a, b, out):
    """``out[:] = a @ b`` for 2-D arrays; ``out`` split into row or column blocks over the
    threads, whichever dimension is longer - or, for a small output over a long inner
    dimension (a weight gradient over many ``T*B`` rows), the inner dimension split and the
    threads' partial products summed.

    Each thread's BLAS call packs all of the other operand, so splitting a short dimension
    two ways doubles the packing; the inner split needs an output-sized buffer and pays only
    when the inner dimension is several times the outer ones (docs/performance-notes.md,
    "The large GEMMs").
    Call inside :func:`single_threaded_blas` so that each piece runs on one thread.
    """
    M, N = out.shape
    K = a.shape[1]
    if M * K * N < _MIN_SPLIT_WORK and K > 1:  # (first: a one-step call's small products)
        np.matmul(a, b, out=out)
        return out
    if K == 1:  # an outer product (a weight gradient of one row), which np.matmul computes
        # in a loop of its own 5-7x slower than BLAS (NumPy 2.x) and BLAS ~3x slower than
        # a compiled loop
        outer(a, b, out)
        return out
    threads = min(num_threads(), max(M, N, K))
    if threads < 2 or _openblas() is None:
        np.matmul(a, b, out=out)
        return out
    partial = None
    if K >= _K_SPLIT_RATIO * max(M, N) and M * N <= _MAX_K_SPLIT_OUT:
        bounds = [K * k // threads for k in range(threads + 1)]
        partial = np.empty((threads - 1, M, N), out.dtype)  # summed into out at the end
        parts = [(a[:, bounds[k]:bounds[k + 1]], b[bounds[k]:bounds[k + 1]],
                  out if k == 0 else partial[k - 1]) for k in range(threads)]
    elif M >= N:
        threads = min(threads, M)
        bounds = [M * k // threads for k in range(threads + 1)]
        parts = [(a[bounds[k]:bounds[k + 1]], b, out[bounds[k]:bounds[k + 1]])
                 for k in range(threads)]
    else:
        threads = min(threads, N)
        bounds = [N * k // threads for k in range(threads + 1)]
        parts = [(a, b[:, bounds[k]:bounds[k + 1]], out[:, bounds[k]:bounds[k + 1]])
                 for k in range(threads)]
    # (the pool keeps one size, that of the thread setting, so that pinned threads stay;
    # a GEMM too narrow for every thread uses some of them)
    pool = _get_pool(num_threads() - 1)
    futures = [pool.submit(np.matmul, pa, pb, out=po) for pa, pb, po in parts[1:]]
    pa, pb, po = parts[0]
    np.matmul(pa, pb, out=po)
    for f in futures:
        f.result()
    if partial is not None:
        for p in partial:
            out += p
    return out
