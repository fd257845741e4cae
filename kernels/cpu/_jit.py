"""Numba settings in one place: fastmath flags, caching, threads.

``FASTMATH`` allows reassociation (so reductions vectorise) and contraction into FMAs, but
not ``nnan``/``ninf``: NaN and inf keep their meaning.
"""

import importlib
import importlib.util
import os
import sys
import warnings

import numba
from llvmlite import binding as _ll
from numba import types
from numba.extending import intrinsic
from numba.np.ufunc import parallel as _parallel


# How long Numba's (GNU OpenMP) workers poll for the next parallel region before they
# sleep (~0.1-0.2 ms): long enough to catch the next call's region, short enough to leave
# the core to the GEMM that follows (docs/performance-notes.md, "Threads").
_SPIN_COUNT = 10_000


def _gnu_openmp():
    """Whether Numba's OpenMP layer links GNU's runtime (libgomp), judged from the library
    file without loading it: the runtime reads its settings when it loads."""
    try:
        spec = importlib.util.find_spec("numba.np.ufunc.omppool")
        with open(spec.origin, "rb") as f:
            return b"libgomp" in f.read()
    except (ImportError, AttributeError, OSError, TypeError, ValueError):
        return False


def wait_settings(environ, gnu):
    """The environment variables to set while Numba's OpenMP runtime loads (see
    :func:`_start_threads`): none if the user chose a policy, else a short spin for GNU's
    runtime and sleeping at once for others."""
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return {}
    return {"GOMP_SPINCOUNT": str(_SPIN_COUNT)} if gnu else {"OMP_WAIT_POLICY": "PASSIVE"}


def _start_threads():
    """Start Numba's thread pool with workers that poll briefly after a parallel region,
    then sleep.

    Idle OpenMP workers spin for milliseconds after each region by default and take the core
    from the BLAS work that follows; sleeping at once costs every region two cross-core
    wake-ups. A GNU runtime polls for ``_SPIN_COUNT`` spins, then sleeps; other runtimes
    sleep at once (``OMP_WAIT_POLICY=PASSIVE``: LLVM's would spin forever under ACTIVE).
    The settings are read once, when the pool's runtime loads, so they are set only around
    that moment: other libraries and child processes keep the user's environment. A user's
    own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins; a pool already running is left as it is.
    """
    settings = wait_settings(os.environ, _gnu_openmp())
    os.environ.update(settings)
    try:
        _load_openmp_layer()
        _parallel._launch_threads()
    finally:
        for name in settings:
            del os.environ[name]
    return settings


def _load_openmp_layer():
    """Load Numba's OpenMP layer bound to the OpenMP runtime it depends on, even where
    another copy of that runtime is already loaded.

    PyTorch puts its own copy of GNU's runtime (``torch/lib/libgomp.so.1``) into the
    process's global symbol scope. Numba's layer, loaded after it, would run its parallel
    regions on torch's copy, whose settings were read when torch was imported - idle workers
    spinning for milliseconds (GOMP_SPINCOUNT 300,000) on the CPU where the kernels' GEMM
    thread runs next. ``RTLD_DEEPBIND`` makes the layer find the runtime it names first:
    its own copy, started with :func:`wait_settings`. (Linux only; a layer already loaded
    stays as it is.)"""
    name = "numba.np.ufunc.omppool"
    if not hasattr(os, "RTLD_DEEPBIND") or name in sys.modules:
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        importlib.import_module(name)
    except ImportError:  # a Numba built without OpenMP: it picks another layer itself
        pass
    finally:
        sys.setdlopenflags(flags)


_started = None  # what start() set while the pool started


def start():
    """Start Numba's thread pool with fastrnn's wait settings, once per process (the first
    kernel call does; importing the backend starts nothing); returns the environment
    variables set while it started, for ``fastrnn info``."""
    global _started
    if _started is None:
        _started = _start_threads()
    return _started


FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
# NumPy's error model: float division by zero gives inf instead of a Python exception,
# which would put a branch in every loop with a division and stop it vectorising.
OPTIONS = {"fastmath": FASTMATH, "error_model": "numpy"}


def _cache_works():
    """Numba caches next to the sources or in NUMBA_CACHE_DIR; test that one is writable."""
    try:
        @numba.njit(cache=True)
        def _probe():  # pragma: no cover - compiled only to test the cache locator
            return 0
        return True
    except RuntimeError:
        return False


CACHE = _cache_works()
if not CACHE:
    warnings.warn("fastrnn: no writable Numba cache directory; the CPU kernels will compile "
                  "in every new process (set NUMBA_CACHE_DIR to a writable folder)",
                  RuntimeWarning, stacklevel=2)


def jit(parallel=False):
    """``numba.njit`` with the project's flags (cached when a cache directory is writable)."""
    return numba.njit(cache=CACHE, parallel=parallel, nogil=True, **OPTIONS)


AVX512 = bool(_ll.get_host_cpu_features().get("avx512f", False))


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorise the loops of the function this is called in with 512-bit vectors
    where the host has AVX-512. LLVM prefers 256-bit ones on AVX-512 cores by default (for
    older cores that slow their clock for wide vectors); the microkernel already runs 512-bit
    code, so the clock is already where it goes."""
    def codegen(context, builder, sig, args):
        if AVX512:  # (a string attribute: llvmlite's add() accepts only flag names)
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()
    return types.none(), codegen


def num_threads():
    """Threads the kernels may use: Numba's setting, which follows NUMBA_NUM_THREADS
    (asking starts the pool: see :func:`start`)."""
    if _started is None:
        start()
    return numba.get_num_threads()
