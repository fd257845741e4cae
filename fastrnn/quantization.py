"""``fastrnn.quantize``: a copy of a model whose recurrent layers keep their weights in
int8 or bfloat16, for inference on the CPU."""

import copy

from ._recurrent import RecurrentBase
from .kernels.quantize import FORMATS, check_format
from .module import Module

__all__ = ["quantize", "FORMATS"]


def quantize(model, dtype):
    """A copy of ``model`` - a recurrent layer, a cell, or any module holding them (a
    ``Sequential``) - whose recurrent layers and cells hold ``weight_ih``, ``weight_hh``
    (and ``weight_hr``) in ``dtype``, for inference. ``model`` is left as it is.

    ``dtype``:

    - ``"int8"``: symmetric, one float32 scale per row (``weight ~= values * scale``, the
      scale the row's largest magnitude over 127); the buffers ``weight_hh_l0`` (int8) and
      ``weight_hh_l0_scale`` (float32) replace the parameter. The cpu backend multiplies
      them with the state rounded to 15 bits per row (a relative error of 3e-5 of the row's
      largest value), in integers.
    - ``"bfloat16"``: each weight rounded to the nearest bfloat16 (8 bits of mantissa),
      held as the ``uint16`` buffer ``weight_hh_l0``.

    Biases, peepholes, LayerNorm gains, inputs, states and outputs stay float32; what the
    copy computes is the float32 layer with the rounded weights (the numpy backend computes
    exactly that). Every cell, stacked, bidirectional and with lengths; the copy is in eval
    mode, and training it (``.train()`` then a call, or ``backward``) is an error, as are
    ``.to("gpu")`` and a change of dtype. ``state_dict``, :func:`fastrnn.save` and
    :func:`fastrnn.load` carry the buffers (load into a model quantized the same way).

    The cpu backend runs batches of up to 16 rows of the RNN, LSTM, peephole LSTM and GRU
    (reset after) in fused low-precision kernels; other calls (larger batches, LayerNorm,
    zoneout, a projection, the reset-before GRU) read the weights back to float32 for the
    call and run the float32 kernels: the same numbers, at float32's speed.
    """
    check_format("dtype", dtype)
    if not isinstance(model, Module):
        raise TypeError(f"model: expected a fastrnn module (a layer, a cell or a Sequential), "
                        f"got {type(model).__name__}; for a PyTorch model use "
                        "fastrnn.torch.quantize")
    if not any(isinstance(m, RecurrentBase) for m in model.modules()):
        raise ValueError(f"model: {type(model).__name__} holds no recurrent layer or cell to "
                         "quantize")
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, RecurrentBase):
            m._quantize(dtype)
    return out.eval()
