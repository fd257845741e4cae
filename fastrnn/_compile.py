"""``fastrnn compile``: fill the cpu backend's on-disk kernel cache ahead of time (a Docker
build step, a cluster's shared image), so that a process's first call loads its kernels
instead of compiling them.

Every cell runs in the same compiled loops, one set per dtype (and per quantized format,
``int8`` and ``bfloat16``: the loops of ``fastrnn.quantize``'d layers): each compiles in a
process of its own, as many at once as asked; a last pass in this process loads them all
again, which also compiles anything a concurrent writer dropped from a shared cache index.
"""

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

DTYPES = ("float32", "float64", "int8", "bfloat16")


def _one(dtype):
    from .kernels import cpu
    start = time.perf_counter()
    cpu.warm(dtype)
    return time.perf_counter() - start


class _Progress:
    """A bar redrawn in place on a terminal; one line an item elsewhere (a file or a pipe
    keeps readable lines, not one line of carriage returns)."""

    def __init__(self, total, out):
        self.total, self.done, self.out = total, 0, out
        self.tty = hasattr(out, "isatty") and out.isatty()

    def step(self, what, seconds):
        self.done += 1
        if self.tty:
            filled = 30 * self.done // self.total
            self.out.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
                           f"{what} ({seconds:.1f} s)\x1b[K")
            if self.done == self.total:
                self.out.write("\n")
        else:
            self.out.write(f"{self.done}/{self.total} {what}: {seconds:.1f} s\n")
        self.out.flush()


def compile_kernels(dtypes, jobs, out=sys.stderr):
    """Compile the cpu backend's kernels in ``dtypes`` with up to ``jobs`` processes;
    returns the seconds it took."""
    start = time.perf_counter()
    progress = _Progress(len(dtypes), out)
    context = multiprocessing.get_context("spawn")  # (a fresh Numba in each worker)
    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(dtypes))),
                             mp_context=context) as pool:
        futures = {pool.submit(_one, d): d for d in dtypes}
        for done in as_completed(futures):
            progress.step(futures[done], done.result())
    for dtype in dtypes:  # loads from the cache; compiles what was dropped
        _one(dtype)
    return time.perf_counter() - start


def default_jobs():
    """One process per usable CPU."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return os.cpu_count() or 1
