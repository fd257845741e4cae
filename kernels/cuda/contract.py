"""The kernel contract of the gpu backend, independent of where the kernels run.

``forward`` and ``backward`` prepare the persistent kernels of ``rnn.cu`` - the plan of
blocks and shared memory, the buffers, the argument lists - and hand them to a *runtime*:
CuPy on a CUDA device (:mod:`.device`, the backend), or the CPU execution of the same
source (:mod:`.emulation`), which the tests run on machines without a
GPU. A runtime has:

- ``xp``: its array module (CuPy or NumPy);
- ``sms``, ``smem_optin``: the device's multiprocessor count and the shared memory a block
  may opt in to;
- ``launch(name, blocks, threads, smem, args)``: run kernel ``name`` (a name expression of
  :mod:`.names`) as a cooperative grid;
- ``matmul(a, b, out)``: ``out[:] = a @ b``.

Shapes (docs/architecture.md legend): ``x [T,B,I]``, ``state`` ``h [B,S]``, ``c [B,H]``,
the :class:`..contract.Weights` ``w_ih [G*H,I]``, ``w_hh [G*H,S]``, ``b_ih, b_hh [G*H]``
or None, ``peepholes [3,H]`` (``lstm_peephole``), ``w_hr [P,H]`` (an LSTM's projection).
"""

import math
from collections import namedtuple
from typing import Any, NamedTuple

import numpy as np

from ..cells import get_cell
from ..contract import Sequence, State, Weights
from ..gate_grads import input_and_weight_grads, peephole_grads
from ..reference import Norms, layer_norm, layer_norm_grad
from .names import CTYPES, backward_name, forward_name

THREADS = 256  # threads a block (the kernels' __launch_bounds__)
# Layers of at most this many hidden units run in one block: no grid barrier a step, only the
# block's own (the step's work is then too small to share between multiprocessors).
ONE_BLOCK_MAX_H = 32

Plan = namedtuple("Plan", "blocks units smem on_chip")

# The kernels' parameters, in rnn.cu's order (RNN_FORWARD_PARAMS, RNN_BACKWARD_PARAMS): a
# launch passes ``tuple(ForwardArgs(...))``, built by name
ForwardArgs = namedtuple("ForwardArgs", "xg w_hh b_hh peep w_hr lengths hbuf c m hg y acts "
                                        "h_prev c_all hn_all ln_hh b_ln ln_c ln_cb zone part "
                                        "h_hat h_rstd c_hat c_rstd steps B H S units reverse "
                                        "ln zoned")
BackwardArgs = namedtuple("BackwardArgs", "w_hh_t peep w_hr dy lengths acts h_prev c_all "
                                          "hn_all c0 dh dc direct dhs dgx dgh ln_hh ln_c ln_cb "
                                          "zone part h_hat h_rstd c_hat c_rstd dgh_raw dlnc zdh "
                                          "steps B H S units reverse ln zoned")


def plan(G, H, itemsize, sms, smem_optin, S=None):
    """How a layer of ``H`` units with ``G`` gates (and a state of ``S`` units: ``H``, or
    an LSTM's projection) runs on a device of ``sms`` multiprocessors whose blocks may opt
    in to ``smem_optin`` bytes of shared memory.

    One block per multiprocessor (or per unit when ``H`` is smaller; one block for at most
    :data:`ONE_BLOCK_MAX_H` units), each owning ``units`` hidden units with all their
    gates; the block's ``G*units*S`` recurrent weights (backward: the columns of its share
    of the ``S`` state units) go to shared memory when they fit (``on_chip``), otherwise
    the kernels read them from global memory (through L2)."""
    S = H if S is None else S
    blocks = 1 if H <= ONE_BLOCK_MAX_H else max(1, min(H, sms))
    units = max(1, math.ceil(H / blocks))
    blocks = max(1, math.ceil(H / units))
    state_units = units if S == H else math.ceil(S / blocks)
    smem = G * max(units * S, state_units * H) * itemsize
    on_chip = smem <= smem_optin
    return Plan(blocks, units, smem if on_chip else 0, on_chip)


def _peep(xp, peepholes, dt):
    """The peephole weights as the kernels take them (one unread element for a cell
    without)."""
    return xp.empty(1, dt) if peepholes is None else xp.ascontiguousarray(peepholes)


class Kept(NamedTuple):
    """What :func:`backward` needs of a training forward: the input and the weights, the
    lengths on the device, the direction, the peepholes and projection as the kernels take
    them, what the kernel saved of each step (``acts``, ``h_prev``, ``c_all``, ``hn_all``:
    see ``rnn.cu``), the initial cell state, a layer-normalised cell's
    :class:`..reference.Norms` (the input side's from the host, the others from the kernel;
    one-element placeholders where absent) and the zoneout factors (or None)."""

    x: Any
    weights: Weights
    lens: Any
    reverse: bool
    peep: Any
    acts: Any
    h_prev: Any
    c_all: Any
    hn_all: Any
    c0: Any
    norms: Norms
    zone: Any


def forward(runtime, cell, x, state, weights, seq=Sequence(), training=True, zoneout=None):
    """Kernel contract forward (:mod:`..contract`) on ``runtime``'s arrays of ``x``'s
    dtype."""
    xp = runtime.xp
    spec = get_cell(cell)
    w_ih, w_hh, b_ih, b_hh, peepholes, w_hr, ln_ih, ln_hh, ln_c, ln_cb = weights
    (h0, c0), (lengths, reverse) = state, seq
    T, B, I = x.shape
    GH, S = w_hh.shape  # S: the state's size (H, or the projection's)
    H = GH // spec.gates
    dt = x.dtype
    ln, zoned, lstm = ln_ih is not None, zoneout is not None, spec.has_cell_state
    if ln and spec.reset_before:
        raise ValueError(f"layer_norm: not defined for {cell!r}")

    def kept(shape, wanted, dtype=dt):  # what backward reads, or a buffer never written
        return xp.empty(shape if wanted else (1,), dtype)

    xg = xp.empty((T, B, GH), dt)
    runtime.matmul(x.reshape(T * B, I), w_ih.T, xg.reshape(T * B, GH))
    x_hat = x_rstd = kept(None, False)
    if ln:  # the input side's norm, all steps at once; the kernel takes W_hh h's
        xg, x_hat, x_rstd = layer_norm(xg, ln_ih)
    if b_ih is not None:
        xg += b_ih
    zeros = xp.zeros(GH, dt)
    b_hh_ = xp.ascontiguousarray(b_hh) if b_hh is not None else zeros
    lens = np.full(B, T, np.int64) if lengths is None else np.asarray(lengths, np.int64)
    lens_d = xp.asarray(lens)
    hbuf = xp.empty((2, B, S), dt)
    hbuf[0] = h0
    if lstm:
        c = xp.array(c0, dt)
    else:  # (gru_reset_before: r * h of the step, for its second product)
        c = xp.zeros((B, H) if spec.reset_before else 1, dt)
    y = xp.empty((T, B, S), dt)
    projected = w_hr is not None
    acts = kept((T, B, GH), training)
    h_prev = kept((T, B, S), training)
    c_all = kept((T, B, H), training and lstm)
    hn_all = kept((T, B, H), training and (spec.family == "gru" or projected))
    h_hat, h_rstd = kept((T, B, GH), training and ln), kept((T, B), training and ln)
    c_hat, c_rstd = kept((T, B, H), training and ln and lstm), kept((T, B), training and ln
                                                                    and lstm)
    zone = xp.ascontiguousarray(zoneout, dt) if zoned else kept(None, False)
    peep = _peep(xp, peepholes, dt)
    w_hr_ = xp.ascontiguousarray(w_hr) if projected else xp.empty(1, dt)
    p = plan(spec.gates, H, dt.itemsize, runtime.sms, runtime.smem_optin, S)
    name = forward_name(CTYPES[dt.name], spec.name, training, p.on_chip)
    unit = xp.empty(1, dt)
    runtime.launch(name, p.blocks, THREADS, p.smem, tuple(ForwardArgs(
        xg=xp.ascontiguousarray(xg), w_hh=xp.ascontiguousarray(w_hh),
        b_hh=zeros if ln else b_hh_, peep=peep, w_hr=w_hr_, lengths=lens_d, hbuf=hbuf, c=c,
        m=xp.empty((B, H) if projected or (ln and lstm) else 1, dt),
        hg=xp.empty((GH, B), dt), y=y, acts=acts, h_prev=h_prev, c_all=c_all, hn_all=hn_all,
        ln_hh=xp.ascontiguousarray(ln_hh) if ln else unit, b_ln=b_hh_,
        ln_c=xp.ascontiguousarray(ln_c) if ln and lstm else unit,
        ln_cb=xp.ascontiguousarray(ln_cb) if ln and lstm else unit, zone=zone,
        part=xp.empty((2, p.blocks, B, 2), np.float64), h_hat=h_hat, h_rstd=h_rstd,
        c_hat=c_hat, c_rstd=c_rstd, steps=np.int32(T), B=np.int32(B), H=np.int32(H),
        S=np.int32(S), units=np.int32(p.units), reverse=np.int32(bool(reverse)),
        ln=np.int32(ln), zoned=np.int32(zoned))))
    h_n = hbuf[T % 2].copy()
    saved = None
    if training:
        saved = Kept(x, weights, lens_d, bool(reverse), peep, acts, h_prev, c_all, hn_all,
                     xp.ascontiguousarray(c0) if lstm else xp.empty(1, dt),
                     Norms(x_hat, x_rstd, h_hat, h_rstd, c_hat, c_rstd),
                     zone if zoned else None)
    return y, State(h_n, c if lstm else None), saved


def backward(runtime, cell, saved, dy, dstate_n):
    """Kernel contract backward (:mod:`..contract`) on ``runtime``'s arrays."""
    xp = runtime.xp
    spec = get_cell(cell)
    x, w = saved.x, saved.weights
    w_ih, w_hh, b_ih, w_hr = w.w_ih, w.w_hh, w.b_ih, w.w_hr
    ln, zoned, lstm = w.ln_ih is not None, saved.zone is not None, spec.has_cell_state
    norms = saved.norms
    dh_n, dc_n = dstate_n
    T, B, I = x.shape
    GH, S = w_hh.shape
    H = GH // spec.gates
    dt = x.dtype
    projected = w_hr is not None
    dh = xp.zeros((B, S), dt) if dh_n is None else xp.array(dh_n, dt)
    dc = xp.zeros((B, H), dt) if dc_n is None else xp.array(dc_n, dt)
    dgh = xp.empty((T, B, GH), dt)
    dgx = xp.empty((T, B, GH), dt) if spec.family == "gru" else dgh
    dhs = xp.empty((T, B, S) if projected else 1, dt)
    dgh_raw = xp.empty((T, B, GH) if ln else 1, dt)
    dlnc = xp.empty((T, B, H) if ln and lstm else 1, dt)
    p = plan(spec.gates, H, dt.itemsize, runtime.sms, runtime.smem_optin, S)
    name = backward_name(CTYPES[dt.name], spec.name, p.on_chip)
    unit = xp.empty(1, dt)
    runtime.launch(name, p.blocks, THREADS, p.smem, tuple(BackwardArgs(
        w_hh_t=xp.ascontiguousarray(w_hh.T), peep=saved.peep,
        w_hr=xp.ascontiguousarray(w_hr) if projected else xp.empty(1, dt),
        dy=xp.ascontiguousarray(dy), lengths=saved.lens, acts=saved.acts,
        h_prev=saved.h_prev, c_all=saved.c_all, hn_all=saved.hn_all, c0=saved.c0, dh=dh,
        dc=dc, direct=xp.zeros((B, H), dt), dhs=dhs, dgx=dgx, dgh=dgh,
        ln_hh=xp.ascontiguousarray(w.ln_hh) if ln else unit,
        ln_c=xp.ascontiguousarray(w.ln_c) if ln and lstm else unit,
        ln_cb=xp.ascontiguousarray(w.ln_c_bias) if ln and lstm else unit,
        zone=saved.zone if zoned else unit,
        part=xp.empty((2, p.blocks, B, 2), np.float64), h_hat=norms.h_hat,
        h_rstd=norms.h_rstd, c_hat=norms.c_hat, c_rstd=norms.c_rstd, dgh_raw=dgh_raw,
        dlnc=dlnc, zdh=xp.empty((B, S) if zoned else 1, dt), steps=np.int32(T),
        B=np.int32(B), H=np.int32(H), S=np.int32(S), units=np.int32(p.units),
        reverse=np.int32(saved.reverse), ln=np.int32(ln), zoned=np.int32(zoned))))
    grads_ln = {}
    if ln:  # the products saw the gradients through the norms; the biases and gains not
        dgx_raw = layer_norm_grad(dgx, norms.x_hat, norms.x_rstd, w.ln_ih)
        dx, dw_ih, dw_hh, _, _ = input_and_weight_grads(
            xp, runtime.matmul, dgx_raw, dgh_raw, x, saved.h_prev, w_ih, False, False)
        db_ih = dgx.sum(axis=(0, 1)) if b_ih is not None else None
        db_hh = dgh.sum(axis=(0, 1)) if b_ih is not None else None
        grads_ln = dict(ln_ih=(dgx * norms.x_hat).sum(axis=(0, 1)),
                        ln_hh=(dgh * norms.h_hat).sum(axis=(0, 1)))
        if lstm:
            grads_ln.update(ln_c=(dlnc * norms.c_hat).sum(axis=(0, 1)),
                            ln_c_bias=dlnc.sum(axis=(0, 1)))
    else:
        dx, dw_ih, dw_hh, db_ih, db_hh = input_and_weight_grads(
            xp, runtime.matmul, dgx, dgh, x, saved.h_prev, w_ih, b_ih is not None,
            spec.name == "gru", rh=saved.hn_all if spec.reset_before else None)
    dpeep = dw_hr = None
    if spec.peepholes:
        dpeep = peephole_grads(xp, dgh, saved.c0, saved.c_all, saved.reverse)
    if projected:  # dw_hr = sum dh' (o * tanh(c'))^T
        dw_hr = runtime.matmul(dhs.reshape(T * B, S).T, saved.hn_all.reshape(T * B, H),
                               xp.empty((S, H), dt))
    return (dx, State(dh, dc if spec.has_cell_state else None),
            Weights(dw_ih, dw_hh, db_ih, db_hh, dpeep, dw_hr, **grads_ln))
