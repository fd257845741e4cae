"""What the on-disk kernel cache holds: which loops are compiled, in which dtypes (for
``fastrnn info``). This reads Numba's own index of each compiled function (an index of
other sources reads as empty); a Numba whose index differs gets None."""


# The quantized weights' storage types (kernels/quantize.py), by the name of the format
_LOW_PRECISION = {"int8": "int8", "uint16": "bfloat16"}


def _arrays(types):
    """The array types among ``types``, looking inside tuples (the loops' named groups)."""
    for t in types:
        if hasattr(t, "ndim"):
            yield t
        elif hasattr(t, "types"):
            yield from _arrays(t.types)


def compiled(loops):
    """``{name: [dtype, ...]}`` for ``loops`` (name -> dispatcher): the dtypes of the
    entries in each one's cache index (a quantized variant by its format's name: ``int8``,
    ``bfloat16``); None where an index cannot be read."""
    try:
        found = {}
        for name, dispatcher in loops.items():
            dtypes = set()
            for sig, *_ in dispatcher._cache._cache_file._load_index():
                kinds = [str(a.dtype) for a in _arrays(sig)]
                low = [_LOW_PRECISION[k] for k in kinds if k in _LOW_PRECISION]
                floats = [k for k in kinds if k.startswith("float")]
                if low or floats:
                    dtypes.add(low[0] if low else floats[0])
            found[name] = sorted(dtypes)
        return found
    except Exception:  # noqa: BLE001 - an index of another Numba: nothing to say
        return None
