"""Compile ahead of time: run every loop kind of one dtype once on small arrays, so that
Numba compiles and caches its kernels (``fastrnn compile``).

Each loop kind is run through the call the backend itself makes, with a plan chosen here
instead of by the call's size: the batch split (forward and backward), the unit split on
two blocks (forward and backward, packed and unpacked weights), the serial unit loop and
the one-call path of a few rows; the packing and product kernels come with them, and the
packing of large weights by all threads. Every cell runs in the same compiled loops (the
cell is a run-time argument), so an LSTM's calls compile them for all cells. The arrays
are random, so the compiled code is the code a real call runs.
"""

import numpy as np

from ..cells import get_cell
from ..contract import Sequence, State, Weights
from ._args import Plan
from ._gemm import pack, pack_column_blocks

_T, _B, _I, _H = 3, 4, 8, 32  # small: the work is compiling, not computing
_UNITS = np.array([0, 16, 32], np.int64)  # two unit blocks


def _problem(cell, dtype, B, T=_T, I=_I):
    """Random input ``x``, :class:`State` and :class:`Weights` of a small layer."""
    spec = get_cell(cell)
    rng = np.random.default_rng(0)
    G = spec.gates

    def r(*shape):
        return rng.uniform(-0.5, 0.5, shape).astype(dtype)

    state = State(r(B, _H), r(B, _H) if spec.has_cell_state else None)
    weights = Weights(r(G * _H, I), r(G * _H, _H), r(G * _H), r(G * _H),
                      r(3, _H) if spec.peepholes else None)
    return r(T, B, I), state, weights


def _forward_backward(forward, backward, cell, problem, plan, units):
    x, state, weights = problem
    y, _, saved = forward(cell, x, state, weights, Sequence(), True, plan)
    backward(cell, saved, np.ones_like(y), State(None, None), units)


def warm(dtype, forward, backward, forward_rows):
    """Compile (or load from the cache) every loop kind in ``dtype``, through the backend's
    own ``forward(cell, x, state, weights, seq, training, plan)``, ``backward(cell, saved,
    dy, dstate_n, units)`` and ``forward_rows`` (the package's internal steps of a call,
    given a plan here)."""
    cell = "lstm"
    dtype = np.dtype(dtype)
    batch = _problem(cell, dtype, _B)
    _forward_backward(forward, backward, cell, batch, Plan(1, None, "gemm"), None)
    _forward_backward(forward, backward, cell, batch, Plan(1, None, "batch"), None)
    # unpacked w_hh (batch 1); the one-step backward on unpacked w_hh; packed (over 128 rows)
    for B, T in ((1, _T), (1, 1), (_B, 40)):
        p = _problem(cell, dtype, B, T)
        for plan in (Plan(2, _UNITS, "units"), Plan(2, _UNITS, "gemm"),
                     Plan(1, _UNITS, "gemm")):
            _forward_backward(forward, backward, cell, p, plan, _UNITS)
    x, state, weights = _problem(cell, dtype, 1, 1)
    forward_rows(cell, x, state, weights, Sequence(), False, np.array([0, _H], np.int64))
    big = np.ones((512, 600), dtype)  # over the line where all threads pack
    pack(big, transpose=True)
    pack_column_blocks(big, [(0, 300), (300, 600)])


def warm_norm(dtype, forward, backward, forward_units):
    """Compile the layer-normalised and zoneout loops (:mod:`._norm`, :mod:`._norm_split`)
    in ``dtype`` through the backend's contract ``forward`` and ``backward`` and the unit
    split's ``forward_units(cell, x, state, weights, seq, zoneout, units)``: an LSTM with
    both, on packed weights (a call of many rows) and on weights as they are (a few rows).
    Every cell runs in these compiled loops but the reset-before GRU and a projected LSTM,
    whose loops compile when first called."""
    dtype = np.dtype(dtype)
    G = get_cell("lstm").gates
    ones = np.ones(G * _H, dtype)
    for B, T in ((_B, _T), (_B, 8 * _T)):  # (12 rows: unpacked; 96: packed)
        x, state, weights = _problem("lstm", dtype, B, T=T)
        weights = weights._replace(ln_ih=ones, ln_hh=ones, ln_c=ones[:_H],
                                   ln_c_bias=ones[:_H])
        zoneout = np.full((T, B, _H), 0.5, dtype)
        y, _, saved = forward("lstm", x, state, weights, Sequence(), True, zoneout)
        backward("lstm", saved, np.ones_like(y), State(None, None))
    forward_units("lstm", x[:, :1], State(state.h[:1], state.c[:1]), weights, Sequence(),
                  zoneout[:, :1], np.array([0, _H // 2, _H], np.int64))


def warm_quantized(forward_quantized, fmt):
    """Compile the quantized inference loops of ``fmt`` (``"int8"`` or ``"bfloat16"``;
    float32 activations): the unit-split loop on one thread and on two blocks, and for int8
    the batch split on int8 panels, through the backend's ``forward_quantized(cell, x,
    state, weights, seq, zoneout, threads)`` (``threads`` chosen here instead of by the
    call's size)."""
    from ..quantize import quantize
    for B, threads in ((1, 1), (1, 2), (24, 2)):
        x, state, weights = _problem("lstm", np.float32, B, T=40, I=_H)
        w = weights._replace(w_ih=quantize(weights.w_ih, fmt),
                             w_hh=quantize(weights.w_hh, fmt))
        forward_quantized("lstm", x, state, w, Sequence(), None, threads)
