"""Argument checks shared by the functional API and the layers.

Every error names the argument, what was expected and what came. Nothing is coerced.
"""

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def positive_int(name, value):
    """``value`` as an int when it is a positive integer (not a bool), else a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def probability(name, value):
    """``value`` as a float in ``[0, 1]``, or a clear error (booleans and strings refused)."""
    numbers = (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, numbers) or not 0 <= value <= 1:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def flag(name, value):
    """``value`` if it is True or False, else a clear error (nothing is coerced)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


def float_dtype(dtype, what="dtype"):
    """Normalise a user's ``dtype=`` to float32 or float64, or raise."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{what}: expected float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{what}: expected float32 or float64, got {dt}")
    return dt


def _fmt(shape):
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def check_array(name, a, ndim, dtype=None, shape=None):
    """Check rank, floating dtype (and equality with ``dtype``) and shape of one array.

    ``shape`` may hold None for dimensions that are free.
    """
    ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if a.ndim not in ranks:
        if shape is not None:
            raise ValueError(f"{name}: expected shape {_fmt(shape)}, got {tuple(a.shape)}")
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name}: expected a {want} array, got shape {tuple(a.shape)}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} to match the others, got {a.dtype}")
    if shape is not None and tuple(shape) != a.shape:  # (equal: the common case, cheap)
        if len(shape) != a.ndim or any(
                want is not None and want != got for want, got in zip(shape, a.shape)):
            raise ValueError(f"{name}: expected shape {_fmt(shape)}, got {tuple(a.shape)}")


def check_lengths(lengths, B, T):
    """Return ``lengths`` as a host int64 array ``[B]`` with values in ``[0, T]``, or raise.

    Accepts a NumPy or CuPy integer array or a sequence of Python ints (metadata, like
    PyTorch's ``lengths``, is small; it always lives on the host).
    """
    if lengths is None:
        return None
    if type(lengths).__module__.split(".")[0] == "cupy":
        lengths = lengths.get()
    arr = np.asarray(lengths)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths: expected shape ({B},) (one per sequence), got {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > T):
        bad = arr[(arr < 0) | (arr > T)][0]
        raise ValueError(f"lengths: expected values in [0, {T}] (T={T}), got {int(bad)}")
    return arr.astype(np.int64)
