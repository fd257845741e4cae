"""The ``gpu`` backend: the kernel contract on CuPy arrays, on the current CUDA device.

Per layer and direction: the input projection of all ``T*B`` rows is one cuBLAS GEMM; the
whole recurrence is one persistent cooperative kernel (``rnn.cu``: each block owns a slice
of hidden units with all their gates, its rows of ``w_hh`` in shared memory when they fit,
one grid barrier per step); backward is one persistent kernel walking time in reverse, then
``dx``, ``dw_ih``, ``dw_hh`` and the bias gradients are single GEMMs / reductions. Kernels
are specialised at compile time (dtype, cell, training, weights on chip or not), compiled
once per device by CuPy (and cached on disk by it), and launched on the current stream.

What a call prepares is in :mod:`.contract`, shared with the CPU execution of the same
kernels (:mod:`.emulation`). Importing this module needs CuPy; :mod:`fastrnn.dispatch`
reports the backend unavailable (with the reason) where CuPy or a device is missing.
"""

import os

import cupy as cp

from . import contract
from ..contract import Sequence
from .names import all_names

__all__ = ["forward", "backward"]

_DIR = os.path.dirname(os.path.abspath(__file__))
_modules = {}
_kernels = {}  # (device, name, smem) -> (kernel, resident blocks)


def _module():
    """The compiled module for the current device (compiled once, then memoised)."""
    device = cp.cuda.Device().id
    if device not in _modules:
        with open(os.path.join(_DIR, "rnn.cu")) as f:
            source = f.read()
        _modules[device] = cp.RawModule(code=source, options=("-std=c++17", f"-I{_DIR}"),
                                        name_expressions=all_names(),
                                        enable_cooperative_groups=True)
    return _modules[device]


class _CuPyRuntime:
    """The runtime of :mod:`.contract` on the current CUDA device."""

    xp = cp

    @property
    def sms(self):
        return cp.cuda.Device().attributes["MultiProcessorCount"]

    @property
    def smem_optin(self):
        return cp.cuda.Device().attributes.get("MaxSharedMemoryPerBlockOptin", 48 * 1024)

    @staticmethod
    def matmul(a, b, out):
        return cp.matmul(a, b, out=out)  # cuBLAS

    def launch(self, name, blocks, threads, smem, args):
        key = (cp.cuda.Device().id, name, smem)
        if key not in _kernels:  # lookup, shared-memory opt-in and occupancy, once each
            kernel = _module().get_function(name)
            if smem > 48 * 1024:
                kernel.max_dynamic_shared_size_bytes = smem
            per_sm = cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
                kernel.kernel.ptr, threads, smem)
            _kernels[key] = (kernel, per_sm * self.sms)
        kernel, resident = _kernels[key]
        if resident < blocks:  # a cooperative grid must be resident all at once
            raise RuntimeError(f"gpu backend: {blocks} blocks of {threads} threads with "
                               f"{smem} bytes of shared memory cannot all be resident "
                               f"(at most {resident} on this device)")
        kernel((blocks,), (threads,), args, shared_mem=smem)


RUNTIME = _CuPyRuntime()


def forward(cell, x, state, weights, seq=Sequence(), training=True, zoneout=None):
    """Kernel contract forward (:mod:`..contract`) on CuPy arrays of ``x``'s dtype."""
    return contract.forward(RUNTIME, cell, x, state, weights, seq, training, zoneout)


def backward(cell, saved, dy, dstate_n):
    """Kernel contract backward (:mod:`..contract`) on CuPy arrays."""
    return contract.backward(RUNTIME, cell, saved, dy, dstate_n)
