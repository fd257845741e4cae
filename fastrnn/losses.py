"""Losses that return ``(loss, grad)``: the value and its gradient with respect to the
prediction, on NumPy or CuPy arrays, with PyTorch's definitions and ``reduction``."""

import numpy as np

from . import dispatch
from ._checks import check_array

_REDUCTIONS = ("mean", "sum")


def _reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")


def mse_loss(pred, target, reduction="mean"):
    """Mean (or summed) squared error, as ``torch.nn.functional.mse_loss``.

    Returns ``(loss, grad)``: a Python float and ``d loss / d pred`` shaped like ``pred``.
    """
    _reduction(reduction)
    dispatch.array_module(pred, target, names=["pred", "target"])
    check_array("pred", pred, tuple(range(0, 8)))
    check_array("target", target, pred.ndim, pred.dtype, pred.shape)
    diff = pred - target
    scale = 1.0 / diff.size if reduction == "mean" else 1.0
    loss = float((diff * diff).sum()) * scale
    return loss, diff * pred.dtype.type(2 * scale)


def cross_entropy(logits, target, ignore_index=-100, mask=None, reduction="mean"):
    """Softmax cross-entropy from logits, as ``torch.nn.functional.cross_entropy`` with the
    classes in the *last* dimension: ``logits [..., C]``, ``target [...]`` integer classes.

    Positions whose target equals ``ignore_index``, or where ``mask`` (boolean ``[...]``) is
    False (padded steps of a sequence), contribute nothing; ``"mean"`` averages over the
    others. With none left (a batch of padding only) the loss is 0 and the gradient zero,
    where PyTorch's mean gives NaN, which would poison the parameters a step later.
    Returns ``(loss, grad)``.
    """
    _reduction(reduction)
    xp = dispatch.array_module(logits, target, mask, names=["logits", "target", "mask"])
    check_array("logits", logits, tuple(range(1, 8)))
    if not np.issubdtype(target.dtype, np.integer):
        raise TypeError(f"target: expected integer class indices, got dtype {target.dtype}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target: expected shape {tuple(logits.shape[:-1])} (logits without "
                         f"the class dimension), got {tuple(target.shape)}")
    C = logits.shape[-1]
    keep = target != ignore_index
    if mask is not None:
        if mask.shape != target.shape or mask.dtype != np.bool_:
            raise ValueError(f"mask: expected a boolean array of shape {tuple(target.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        keep = keep & mask
    safe = xp.where(keep, target, 0)
    if target.size and bool(((safe < 0) | (safe >= C)).any()):
        bad = int(safe[(safe < 0) | (safe >= C)][0])
        raise ValueError(f"target: expected classes in [0, {C}) or ignore_index "
                         f"{ignore_index}, got {bad}")
    with np.errstate(invalid="ignore", over="ignore"):  # (inf or NaN logits: NaN, silently)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_z = xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))
        log_p = shifted - log_z
    picked = xp.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0]
    count = int(keep.sum())
    scale = 1.0 / count if (reduction == "mean" and count) else 1.0
    loss = 0.0 - float(xp.where(keep, picked, 0).sum()) * scale  # (0.0, never -0.0)
    grad = xp.exp(log_p)
    xp.put_along_axis(grad, safe[..., None],
                      xp.take_along_axis(grad, safe[..., None], axis=-1) - 1, axis=-1)
    grad = grad * (keep[..., None] * logits.dtype.type(scale))
    return loss, grad.astype(logits.dtype)
