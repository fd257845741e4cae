"""The memory the cpu backend keeps for reuse between calls, and how to bound or free it.

Large arrays of the cpu backend (outputs, what forward saves for backward, gradients) come
from a pool of blocks that stay mapped between calls, which saves the page faults of
allocating them afresh every call. The pool keeps at most a limit of idle blocks - 256 MiB
unless ``FASTRNN_CACHE_LIMIT`` (``"512M"``, ``"1G"``, ``"0"`` for none) or
:func:`set_cache_limit` says otherwise - dropping the longest-idle blocks first.
Blocks in use by live arrays are never counted or freed.
"""

import numpy as np

from . import dispatch


def _cpu():
    try:
        return dispatch.resolve("cpu", np)[1]
    except dispatch.BackendUnavailableError:
        return None


def empty_cache():
    """Release the idle blocks the cpu backend keeps for reuse, as
    ``torch.cuda.empty_cache()`` does for PyTorch's; returns the bytes released."""
    kernels = _cpu()
    return 0 if kernels is None else kernels.empty_cache()


def set_cache_limit(nbytes):
    """Keep at most ``nbytes`` of idle blocks for reuse (0 turns the cache off); idle blocks
    over the new limit are released at once."""
    kernels = _cpu()
    if kernels is None:
        raise dispatch.BackendUnavailableError(
            "set_cache_limit: the cache belongs to the cpu backend, which cannot run here: "
            + dispatch.backends()["cpu"]["reason"])
    kernels.set_cache_limit(nbytes)


def cache_info():
    """The cache's state: ``idle_bytes``, ``idle_blocks``, ``limit_bytes``, and the
    ``hits`` and ``misses`` of pool-sized allocations so far (empty when the cpu backend
    cannot run)."""
    kernels = _cpu()
    return {} if kernels is None else kernels.cache_info()
