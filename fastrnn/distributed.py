"""Data-parallel training of native fastrnn models over ``torch.distributed``.

Launch as for any PyTorch job (``torchrun --nproc-per-node 2 train.py``; gloo on CPUs,
NCCL between GPUs), give each rank its share of the batch, and after ``backward`` call
:func:`average_gradients` so that every rank holds the gradients of the whole batch (each
rank's loss a mean over its own, equal share) before the optimizer step.
:func:`broadcast_parameters` makes every rank start from rank ``src``'s weights. Gradients
travel as one flat buffer per dtype: one collective call per step. Needs torch; this module
imports it only when called.
"""

import numpy as np

from . import dispatch
from .module import Module


def _params(model):
    params = model.parameters() if isinstance(model, Module) else list(model)
    if not params:
        raise ValueError("model: expected a fastrnn Module or a list of Parameters with at "
                         "least one parameter")
    return params


def _as_tensor(torch, a):
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.from_dlpack(a)


def _initialized():
    import torch
    import torch.distributed as dist
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("fastrnn.distributed: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group(...) first (torchrun sets "
                           "up the environment for it)")
    return torch, dist


def average_gradients(model, group=None):
    """Replace every parameter's ``.grad`` by its mean over the ranks of ``group``. A
    parameter without a gradient on this rank counts as zeros (so that all ranks take part
    in the same reduction)."""
    torch, dist = _initialized()
    params = _params(model)
    by_dtype = {}
    for p in params:
        by_dtype.setdefault(np.dtype(p.dtype), []).append(p)
    world = dist.get_world_size(group)
    for dtype, ps in by_dtype.items():
        xp = dispatch.array_module(ps[0].data)
        flat = xp.concatenate([(p.grad if p.grad is not None else xp.zeros_like(p.data))
                               .reshape(-1) for p in ps])
        dist.all_reduce(_as_tensor(torch, flat), op=dist.ReduceOp.SUM, group=group)
        flat /= dtype.type(world)
        start = 0
        for p in ps:
            p.grad = flat[start:start + p.data.size].reshape(p.shape)
            start += p.data.size


def broadcast_parameters(model, src=0, group=None):
    """Copy rank ``src``'s parameter values to every rank of ``group`` (in place)."""
    torch, dist = _initialized()
    for p in _params(model):
        xp = dispatch.array_module(p.data)
        data = xp.ascontiguousarray(p.data)
        dist.broadcast(_as_tensor(torch, data), src=src, group=group)
        if data is not p.data:
            p.data[...] = data
