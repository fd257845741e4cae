"""Low-precision weight formats for inference: what a quantized weight matrix is, how one is
made from float32 weights and how it reads back.

- ``"int8"``: symmetric, one float32 scale per row (an output unit's gate row):
  ``w[j, k] ~= values[j, k] * scale[j]``, ``values`` in ``[-127, 127]``, ``scale[j] =
  max_k |w[j, k]| / 127``.
- ``"bfloat16"``: the upper 16 bits of each float32 (sign, exponent, 7 bits of mantissa),
  rounded to nearest even; held as ``uint16`` (NumPy has no bfloat16 type).

A layer's matrices ``w_ih``, ``w_hh`` and ``w_hr`` may be :class:`Quantized` in a
:class:`.contract.Weights`; biases, peepholes and LayerNorm gains stay float32. What such a
layer computes is defined as the float32 layer with the :meth:`Quantized.dequantize`\\ d
weights (the reference backend computes exactly that); inputs, states and outputs are
float32.
"""

from typing import Any, NamedTuple

import numpy as np

FORMATS = ("int8", "bfloat16")
FIELDS = ("w_ih", "w_hh", "w_hr")  # the weights a quantized layer holds in low precision


class Quantized(NamedTuple):
    """A ``[M,K]`` weight matrix in a low-precision ``format`` (see the module's text):
    ``values`` (``int8``, or ``uint16`` holding bfloat16 bits) and, for int8, ``scale``
    (float32 ``[M]``; None for bfloat16)."""

    values: Any
    scale: Any
    format: str

    @property
    def shape(self):
        return self.values.shape

    @property
    def ndim(self):
        return self.values.ndim

    @property
    def dtype(self):
        """The dtype the matrix stands for (what :meth:`dequantize` gives): float32."""
        return np.dtype(np.float32)

    def dequantize(self, out=None):
        """The float32 matrix these values stand for (into ``out [M,K]`` when given)."""
        if out is None:
            out = np.empty(self.values.shape, np.float32)
        if self.format == "int8":
            np.multiply(self.values, self.scale[:, None], out=out)
        else:
            out.view(np.uint32)[...] = self.values
            out.view(np.uint32)[...] <<= 16
        return out


def check_format(name, fmt):
    """``fmt`` if it is one of :data:`FORMATS`, or a clear error naming ``name``."""
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise ValueError(f"{name}: expected one of {list(FORMATS)}, got {fmt!r}")
    return fmt


def quantize(w, fmt, name="w"):
    """``w`` (a float32 ``[M,K]`` matrix of finite values) as :class:`Quantized` in
    ``fmt``; ``name`` labels the errors."""
    check_format("format", fmt)
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype != np.float32:
        raise ValueError(f"{name}: expected a float32 matrix, got {w.dtype} of shape "
                         f"{w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{name}: cannot quantize weights that are not finite (NaN or inf)")
    if fmt == "int8":
        peak = np.abs(w).max(axis=1)
        scale = np.where(peak > 0, peak / np.float32(127), np.float32(1)).astype(np.float32)
        values = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
        return Quantized(values, scale, fmt)
    bits = w.view(np.uint32).astype(np.uint64)  # (no overflow while rounding)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return Quantized(rounded.astype(np.uint16), None, fmt)


def is_quantized(weights):
    """Whether a :class:`.contract.Weights` holds a :class:`Quantized` matrix."""
    return any(isinstance(getattr(weights, f), Quantized) for f in FIELDS)


def dequantized(weights):
    """``weights`` with every :class:`Quantized` matrix read back as float32."""
    return weights._replace(**{f: getattr(weights, f).dequantize() for f in FIELDS
                               if isinstance(getattr(weights, f), Quantized)})
