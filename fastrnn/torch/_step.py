"""One step of a cell on CPU tensors in eager code, straight on the kernel contract.

A cell call is one step of one layer and one direction whose arguments the module's own
(torch's) checks have passed: nothing is left for :func:`fastrnn.functional.rnn` to check
or stack. This path hands the tensors' memory to the backend's ``forward`` and
``backward`` (docs/architecture.md, "The kernel contract") and wraps the results, with
autograd's saved tensors guarding the inputs and weights (their versions are checked in
backward). Under ``torch.compile`` and ``torch.func`` the cells take :mod:`._ops`'s
operator path instead.
"""

import numpy as np
import torch

from .. import dispatch
from ..kernels.contract import State, Weights
from ._ops import DOUBLE_BACKWARD, legacy_vmap_map, memory_of


def step(cell, x, h, c, fields, weights, backend, need, zoneout=0.0, training=False):
    """``h'`` (and ``c'`` for the LSTM) for ``x [B,I]``, ``h [B,H]``, ``c [B,H]`` or None
    and the cell's ``weights``, the :class:`Weights` ``fields`` in order; ``need``: keep
    what backward needs (some argument requires grad); ``zoneout``: the rate (masks from
    torch's generator when ``training``, else the rate itself)."""
    spec = (cell, backend, tuple(fields), _zoneout(zoneout, training, h))
    if need:
        return _Step.apply(spec, x, h, c, *weights)
    h_n, c_n, _, _ = _forward(spec, x, h, c, weights, False)
    return h_n if c is None else (h_n, c_n)


def _zoneout(p, training, h):
    """The step's zoneout factors ``[1,B,H]`` as an array, or None."""
    if not p:
        return None
    if training:
        return memory_of((torch.rand(h.shape, dtype=h.dtype) < p).to(h.dtype))[None]
    return np.full((1,) + tuple(h.shape), p, memory_of(h).dtype)


def _forward(spec, x, h, c, weights, training):
    cell, backend, fields, zoneout = spec
    kernel = dispatch.resolve(backend or None, np)[1]
    w = Weights(**dict(zip(fields, [memory_of(t) for t in weights])))
    extra = {} if zoneout is None else {"zoneout": zoneout}
    _, last, saved = kernel.forward(
        cell, memory_of(x)[None], State(memory_of(h), None if c is None else memory_of(c)),
        w, training=training, **extra)
    return (torch.from_numpy(last.h), None if last.c is None else torch.from_numpy(last.c),
            saved, kernel)


class _Step(torch.autograd.Function):
    """The step with autograd: the backend's backward for this step's saved state."""

    @staticmethod
    def forward(ctx, spec, x, h, c, *weights):
        h_n, c_n, saved, kernel = _forward(spec, x, h, c, weights, True)
        ctx.step = (spec[0], kernel, saved, spec[2])
        # (saved for their versions: a change in place before backward is torch's error)
        ctx.save_for_backward(x, h, *weights)
        return h_n if c is None else (h_n, c_n)

    @staticmethod
    def backward(ctx, grad_h, grad_c=None):
        ctx.saved_tensors  # (the version check)
        if torch.is_grad_enabled() or _legacy_batched(grad_h, grad_c):
            # (create_graph=True: a node whose own backward refuses, with our message;
            # gradcheck's batched check: a loop over the batch)
            dx, dh, dc, *dws = _StepBackward.apply(ctx.step, grad_h, grad_c)
        else:
            dx, dh, dc, *dws = _grads(ctx.step, grad_h, grad_c)
        return (None, dx, dh, dc, *dws)


def _legacy_batched(*grads):
    """Whether any of ``grads`` is a batched tensor of the older vmap (gradcheck's)."""
    return any(g is not None and torch._C._functorch.is_legacy_batchedtensor(g)
               for g in grads)


class _StepBackward(torch.autograd.Function):
    """The backend's backward of one step; differentiating it again is an error."""

    @staticmethod
    def forward(ctx, step, grad_h, grad_c):
        if _legacy_batched(grad_h, grad_c):  # gradcheck's batched check
            return tuple(legacy_vmap_map(lambda gh, gc: _grads(step, gh, gc),
                                         (grad_h, grad_c)))
        return tuple(_grads(step, grad_h, grad_c))

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD)


def _grads(step, grad_h, grad_c):
    """``[dx, dh, dc or None, *the weights' gradients in the fields' order]`` as
    tensors."""
    cell, kernel, saved, fields = step
    dy = np.ascontiguousarray(memory_of(grad_h))[None]
    dc_n = None if grad_c is None else np.ascontiguousarray(memory_of(grad_c))
    dx, d0, dw = kernel.backward(cell, saved, dy, State(None, dc_n))
    grads = [dx[0], d0.h, d0.c] + [getattr(dw, f) for f in fields]
    return [None if g is None else torch.from_numpy(np.ascontiguousarray(g)) for g in grads]
