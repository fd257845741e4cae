"""A caching allocator for the CPU backend's large arrays.

Every call allocates its outputs and what forward saves for backward afresh; glibc returns
large blocks to the OS on free, so each new array is faulted in page by page again
(measured: ~9,300 minor faults per C7 training call, ~20% of its time). Arrays from
:func:`empty` are views of blocks this pool keeps: when the last view of an array is gone,
its block goes back to the pool (``weakref.finalize`` on the array's base object) and the
next call of a similar size reuses it, already mapped. Blocks come in size classes of
eighths of a power of two; the pool keeps at most ``LIMIT_BYTES`` of idle blocks.
"""

import math
import threading
import weakref

import numpy as np

MIN_BYTES = 1 << 20  # smaller arrays come from malloc's own (reused) arenas
LIMIT_BYTES = 1 << 30
_lock = threading.Lock()
_free = {}
_idle_bytes = 0


class _Base:
    """The base object of a pooled array: exposes one block, releases it when collected."""

    __slots__ = ("__array_interface__", "__weakref__")


def _size_class(nbytes):
    top = 1 << max(0, math.ceil(math.log2(nbytes)) - 3)  # an eighth of the next power of 2
    return -(-nbytes // top) * top


def _release(size, block):
    global _idle_bytes
    with _lock:
        if _idle_bytes + size <= LIMIT_BYTES:
            _free.setdefault(size, []).append(block)
            _idle_bytes += size


def empty(shape, dtype):
    """Like ``np.empty`` (C order), from the pool when the array is large."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    global _idle_bytes
    size = _size_class(nbytes)
    with _lock:
        blocks = _free.get(size)
        block = blocks.pop() if blocks else None
        if block is not None:
            _idle_bytes -= size
    if block is None:
        block = np.empty(size, np.uint8)
    base = _Base()
    base.__array_interface__ = {"shape": tuple(shape), "typestr": dtype.str, "version": 3,
                                "data": (block.ctypes.data, False)}
    weakref.finalize(base, _release, size, block).atexit = False
    return np.asarray(base)


def idle_bytes():
    """Bytes the pool holds for reuse (for tests and ``fastrnn info``)."""
    return _idle_bytes
