"""``fastrnn compile``: fill the cpu backend's on-disk kernel cache ahead of time (a Docker
build step, a cluster's shared image), so that a process's first call loads its kernels
instead of compiling them.

Each cell and dtype compiles in a process of its own, as many at once as asked; a last pass
in this process loads every one of them again, which also compiles anything a concurrent
writer dropped from a shared cache index.
"""

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

DTYPES = ("float32", "float64")


def _one(cell, dtype, shared):
    from .kernels import cpu
    start = time.perf_counter()
    cpu.warm(cell, dtype)
    if shared:
        cpu.warm_shared(dtype)
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


def compile_kernels(cells, dtypes, jobs, out=sys.stderr):
    """Compile the cpu backend's kernels of ``cells`` in ``dtypes`` with ``jobs`` processes;
    returns the seconds it took."""
    start = time.perf_counter()
    units = [(c, d, k == 0) for d in dtypes for k, c in enumerate(cells)]
    progress = _Progress(len(units), out)
    context = multiprocessing.get_context("spawn")  # (a fresh Numba in each worker)
    with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context) as pool:
        futures = {pool.submit(_one, *u): u for u in units}
        for done in as_completed(futures):
            cell, dtype, _ = futures[done]
            progress.step(f"{cell} {dtype}", done.result())
    for cell, dtype, shared in units:  # loads from the cache; compiles what was dropped
        _one(cell, dtype, shared)
    return time.perf_counter() - start


def default_jobs():
    """One process per usable CPU."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return os.cpu_count() or 1
