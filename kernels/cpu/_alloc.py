"""A caching allocator for the CPU backend's large arrays.

Every call allocates its outputs and what forward saves for backward afresh; glibc returns
large blocks to the OS on free, so each new array would be faulted in page by page again
(~20% of a C7 training call). Arrays from :func:`empty` of at least ``MIN_BYTES`` are views
of blocks this pool keeps: when the last view of an array is gone, its block goes back to
the pool (the ``__del__`` of the array's base object) and the next call of a similar
size reuses it, already mapped. Blocks come in size classes of eighths of a power of two.

The pool keeps at most :func:`limit` bytes of idle blocks (``FASTRNN_CACHE_LIMIT`` or
:func:`set_limit`; 256 MiB by default), dropping the longest-idle blocks first, so a run
of ever-new shapes cannot grow it; :func:`empty_cache` hands every idle block back.
"""

import math
import os
import re
import threading

import numpy as np

MIN_BYTES = 1 << 20  # smaller arrays come from malloc's own (reused) arenas
DEFAULT_LIMIT = 256 << 20
ENV_VAR = "FASTRNN_CACHE_LIMIT"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_lock = threading.Lock()
_idle = []  # (size, block), longest idle first
_idle_bytes = 0
_limit = None  # bytes, once set or read from the environment
_stats = {"hits": 0, "misses": 0}


def parse_size(text, what=ENV_VAR):
    """Bytes from ``"268435456"``, ``"256M"``, ``"1G"`` (K, M, G: powers of 1024)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", str(text), flags=re.IGNORECASE)
    if m is None:
        raise ValueError(f"{what}: expected a size in bytes such as 268435456, 256M or 1G "
                         f"(0 turns the cache off), got {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def limit():
    """Bytes of idle blocks the pool may keep."""
    global _limit
    if _limit is None:
        env = os.environ.get(ENV_VAR)
        _limit = DEFAULT_LIMIT if env is None else parse_size(env)
    return _limit


def set_limit(nbytes):
    """Keep at most ``nbytes`` of idle blocks (0: keep none); idle blocks over the new
    limit are released at once."""
    global _limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
        raise ValueError(f"nbytes: expected an integer >= 0, got {nbytes!r}")
    with _lock:
        _limit = int(nbytes)
        _trim(_limit)


def _trim(keep):
    """Drop the longest-idle blocks until at most ``keep`` bytes stay (hold the lock)."""
    global _idle_bytes
    while _idle and _idle_bytes > keep:
        size, _ = _idle.pop(0)
        _idle_bytes -= size


def empty_cache():
    """Release every idle block; returns the bytes released."""
    with _lock:
        released = _idle_bytes
        _trim(0)
    return released


def info():
    """``idle_bytes``, ``idle_blocks``, ``limit_bytes`` and the ``hits`` and ``misses`` of
    allocations of pool size since the process started."""
    with _lock:
        return {"idle_bytes": _idle_bytes, "idle_blocks": len(_idle),
                "limit_bytes": limit(), **_stats}


class _Base:
    """The base object of a pooled array: exposes one block of ``size`` bytes, releases it
    when collected (``__del__``: a few times cheaper than ``weakref.finalize``)."""

    __slots__ = ("__array_interface__", "size", "block")

    def __del__(self):
        try:
            _release(self.size, self.block)
        except Exception:  # noqa: BLE001 - at interpreter exit the module may be gone
            pass


def _size_class(nbytes):
    top = 1 << max(0, math.ceil(math.log2(nbytes)) - 3)  # an eighth of the next power of 2
    return -(-nbytes // top) * top


def _release(size, block):
    global _idle_bytes
    cap = limit()
    if size > cap:
        return
    with _lock:
        _trim(cap - size)
        _idle.append((size, block))
        _idle_bytes += size


def _take(size):
    """The most recently idle block of ``size``, or None (hold the lock)."""
    global _idle_bytes
    for k in range(len(_idle) - 1, -1, -1):
        if _idle[k][0] == size:
            _idle_bytes -= size
            return _idle.pop(k)[1]
    return None


def empty(shape, dtype):
    """Like ``np.empty`` (C order), from the pool when the array is large."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    size = _size_class(nbytes)
    with _lock:
        block = _take(size)
        _stats["hits" if block is not None else "misses"] += 1
    if block is None:  # (the memory and its address, read once: ndarray.ctypes is slow)
        memory = np.empty(size, np.uint8)
        block = (memory, memory.ctypes.data)
    base = _Base()
    base.size, base.block = size, block
    base.__array_interface__ = {"shape": tuple(shape), "typestr": dtype.str, "version": 3,
                                "data": (block[1], False)}
    return np.asarray(base)


def idle_bytes():
    """Bytes the pool holds for reuse."""
    return _idle_bytes


def _after_fork_in_child():
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
