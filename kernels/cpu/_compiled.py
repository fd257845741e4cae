"""What the on-disk kernel cache holds: which loops are compiled, in which dtypes (for
``fastrnn info``). This reads Numba's own index of each compiled function (an index of
other sources reads as empty); a Numba whose index differs gets None."""


def compiled(loops):
    """``{name: [dtype, ...]}`` for ``loops`` (name -> dispatcher): the dtypes of the
    entries in each one's cache index; None where an index cannot be read."""
    try:
        found = {}
        for name, dispatcher in loops.items():
            dtypes = set()
            for sig, *_ in dispatcher._cache._cache_file._load_index():
                floats = [str(a.dtype) for a in sig if hasattr(a, "ndim")
                          and str(a.dtype).startswith("float")]
                if floats:
                    dtypes.add(floats[0])
            found[name] = sorted(dtypes)
        return found
    except Exception:  # noqa: BLE001 - an index of another Numba: nothing to say
        return None
