"""The ``gpu`` backend: the kernel contract on CuPy arrays.

Per layer and direction: the input projection of all ``T*B`` rows is one cuBLAS GEMM; the
whole recurrence is one persistent cooperative kernel (``rnn.cu``: each block owns a slice
of hidden units with all their gates, its rows of ``w_hh`` in shared memory when they fit,
one grid barrier per step); backward is one persistent kernel walking time in reverse, then
``dx``, ``dw_ih``, ``dw_hh`` and the bias gradients are single GEMMs / reductions. Kernels
are specialised at compile time (dtype, cell, training, weights on chip or not), compiled
once per device by CuPy (and cached on disk by it), and launched on the current stream.

Importing this module needs CuPy; :mod:`fastrnn.dispatch` reports the backend unavailable
(with the reason) where CuPy or a device is missing.
"""

import math
import os

import cupy as cp
import numpy as np

from ..cells import get_cell
from ..gate_grads import input_and_weight_grads
from .names import CTYPES, all_names, backward_name, defines, forward_name

__all__ = ["forward", "backward", "plan"]

_DIR = os.path.dirname(os.path.abspath(__file__))
THREADS = 256
_modules = {}


def _module():
    """The compiled module for the current device (compiled once, then memoised)."""
    device = cp.cuda.Device().id
    if device not in _modules:
        with open(os.path.join(_DIR, "rnn.cu")) as f:
            source = f.read()
        _modules[device] = cp.RawModule(code=source, options=("-std=c++17", f"-I{_DIR}", *defines()),
                                        name_expressions=all_names(),
                                        enable_cooperative_groups=True)
    return _modules[device]


def _matmul(a, b, out):
    return cp.matmul(a, b, out=out)  # cuBLAS


def _kernel(name):
    return _module().get_function(name)


def plan(G, H, itemsize):
    """``(blocks, units, smem_bytes, weights_on_chip)`` for a layer of ``H`` units.

    One block per SM (or per unit when ``H`` is smaller), each owning ``units`` hidden units
    with all their ``G`` gates; the block's ``G*units*H`` weights go to shared memory when
    they fit in what a block may opt in to, otherwise they are read from L2 (fallback).
    """
    attrs = cp.cuda.Device().attributes
    sms = attrs["MultiProcessorCount"]
    blocks = min(H, sms)
    units = math.ceil(H / blocks)
    blocks = math.ceil(H / units)
    smem = G * units * H * itemsize
    on_chip = smem <= attrs.get("MaxSharedMemoryPerBlockOptin", 48 * 1024)
    return blocks, units, (smem if on_chip else 0), on_chip


def _launch(name, blocks, smem, args):
    kernel = _kernel(name)
    if smem > 48 * 1024:
        kernel.max_dynamic_shared_size_bytes = smem
    per_sm = cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(kernel.kernel.ptr,
                                                                     THREADS, smem)
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    if per_sm * sms < blocks:  # a cooperative grid must be resident all at once
        raise RuntimeError(f"gpu backend: {blocks} blocks of {THREADS} threads with {smem} "
                           f"bytes of shared memory cannot all be resident ({per_sm} per "
                           f"SM x {sms} SMs)")
    kernel((blocks,), (THREADS,), args, shared_mem=smem)


def forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None, reverse=False,
            training=True):
    """Kernel contract forward (see DESIGN.md) on CuPy arrays of ``x``'s dtype."""
    spec = get_cell(cell)
    T, B, I = x.shape
    GH, H = w_hh.shape
    dt = x.dtype
    xg = cp.matmul(x.reshape(T * B, I), w_ih.T).reshape(T, B, GH)
    if b_ih is not None:
        xg += b_ih
    b_hh_ = b_hh if b_hh is not None else cp.zeros(GH, dt)
    lens = np.full(B, T, np.int64) if lengths is None else np.asarray(lengths, np.int64)
    lens_d = cp.asarray(lens)
    hbuf = cp.empty((2, B, H), dt)
    hbuf[0] = h0
    c = cp.array(c0, dt) if spec.has_cell_state else cp.zeros((1,), dt)
    y = cp.empty((T, B, H), dt)
    one = cp.empty((1,), dt)
    acts = cp.empty((T, B, GH), dt) if training else one
    h_prev = cp.empty((T, B, H), dt) if training else one
    c_all = cp.empty((T, B, H), dt) if training and spec.has_cell_state else one
    hn_all = cp.empty((T, B, H), dt) if training and spec.name == "gru" else one
    blocks, units, smem, on_chip = plan(spec.gates, H, dt.itemsize)
    name = forward_name(CTYPES[dt.name], spec.name, training, on_chip)
    _launch(name, blocks, smem, (
        cp.ascontiguousarray(xg), cp.ascontiguousarray(w_hh), cp.ascontiguousarray(b_hh_),
        lens_d, hbuf, c, cp.empty((GH, B), dt), y, acts, h_prev, c_all, hn_all,
        np.int32(T), np.int32(B), np.int32(H), np.int32(units), np.int32(bool(reverse))))
    h_n = hbuf[T % 2].copy()
    saved = None
    if training:
        saved = dict(x=x, w_ih=w_ih, w_hh=w_hh, has_bias=b_ih is not None, lens=lens_d,
                     reverse=reverse, acts=acts, h_prev=h_prev, c_all=c_all, hn_all=hn_all,
                     c0=cp.ascontiguousarray(c0) if spec.has_cell_state else one)
    return y, h_n, (c if spec.has_cell_state else None), saved


def backward(cell, saved, dy, dh_n, dc_n):
    """Kernel contract backward (see DESIGN.md) on CuPy arrays."""
    spec = get_cell(cell)
    x, w_ih, w_hh = saved["x"], saved["w_ih"], saved["w_hh"]
    T, B, I = x.shape
    GH, H = w_hh.shape
    dt = x.dtype
    dh = cp.zeros((B, H), dt) if dh_n is None else cp.array(dh_n, dt)
    dc = cp.zeros((B, H), dt) if dc_n is None else cp.array(dc_n, dt)
    dgh = cp.empty((T, B, GH), dt)
    dgx = cp.empty((T, B, GH), dt) if spec.name == "gru" else dgh
    blocks, units, smem, on_chip = plan(spec.gates, H, dt.itemsize)
    name = backward_name(CTYPES[dt.name], spec.name, on_chip)
    _launch(name, blocks, smem, (
        cp.ascontiguousarray(w_hh.T), cp.ascontiguousarray(dy), saved["lens"],
        saved["acts"], saved["h_prev"], saved["c_all"], saved["hn_all"], saved["c0"],
        dh, dc, cp.zeros((B, H), dt), dgx, dgh,
        np.int32(T), np.int32(B), np.int32(H), np.int32(units),
        np.int32(bool(saved["reverse"]))))
    dx, dw_ih, dw_hh, db_ih, db_hh = input_and_weight_grads(
        cp, _matmul, dgx, dgh, x, saved["h_prev"], w_ih, saved["has_bias"],
        spec.name == "gru")
    return dx, dh, (dc if spec.has_cell_state else None), dw_ih, dw_hh, db_ih, db_hh
