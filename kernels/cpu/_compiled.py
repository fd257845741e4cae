"""What the on-disk kernel cache holds: which cells' loops are compiled, in which dtypes (for
``fastrnn info``).

Each cell's loops are closures over its id (:func:`._loops.batch_loops`), and Numba keys a
closure's cache entries by a hash of its closure values: an entry's cell is the cell whose
id hashes to it. This reads Numba's index files; a Numba whose format differs gets None.
"""

import hashlib


def compiled(loops, cell_ids):
    """``{kind: [(cell, dtype), ...]}``: for each ``loops`` entry ``kind -> dispatcher`` (one
    cell's compiled forward loop: every cell's share one index), the cells (names of
    ``cell_ids``, name -> id) and dtypes the cache holds; None where the index cannot be
    read."""
    try:
        from numba.core.serialize import dumps
        by_hash = {hashlib.sha256(dumps((cid,))).hexdigest(): name
                   for name, cid in cell_ids.items()}
        found = {}
        for kind, dispatcher in loops.items():
            pairs = set()
            # (Numba's own reading: an index of other sources reads as empty)
            for sig, _, (_, cvars) in dispatcher._cache._cache_file._load_index():
                dtypes = [a.dtype for a in sig if hasattr(a, "dtype") and hasattr(a, "ndim")]
                if cvars in by_hash and dtypes:
                    pairs.add((by_hash[cvars], str(dtypes[0])))
            found[kind] = sorted(pairs)
        return found
    except Exception:  # noqa: BLE001 - an index of another Numba: nothing to say
        return None
