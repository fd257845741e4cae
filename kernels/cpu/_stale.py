"""The compiled-kernel cache follows the sources of every kernel, not only each loop's own.

Numba checks a cached function against its own source file alone: a change in a function
it calls from another file (an activation in ``_math.py``, a cell's step in ``_cells.py``,
the cell ids of ``kernels/cells.py``) leaves the machine code of every loop that inlined it
as it was - after a ``git pull`` in an editable install, say. So before the backend's first
call in a process the sources are hashed; where the hash differs from the one stored in
the cache directory, this package's cache files there are removed, and every kernel
compiles again from the current sources.
"""

import hashlib
import os
import pathlib

_HERE = pathlib.Path(__file__).resolve().parent
STAMP = "fastrnn-kernel-sources.sha256"


def sources_hash():
    """SHA-256 over the backend's sources and the cell registry they take ids from."""
    digest = hashlib.sha256()
    for path in sorted(_HERE.glob("*.py")) + [_HERE.parent / "cells.py"]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _ours(name):
    """Whether a cache file belongs to a module of this package (``_loops.forward_loop-
    ...nbi``, or ``<module>.<function>...`` in general)."""
    stem = name.split(".", 1)[0]
    return name.endswith((".nbi", ".nbc")) and (_HERE / f"{stem}.py").is_file()


def clear_if_stale(cache_dir):
    """Remove this package's files from ``cache_dir`` when they were compiled from other
    sources (or when nothing says from which); returns how many were removed."""
    if not cache_dir or not os.path.isdir(cache_dir):
        return 0
    stamp = os.path.join(cache_dir, STAMP)
    current = sources_hash()
    try:
        with open(stamp) as f:
            if f.read().strip() == current:
                return 0
    except OSError:
        pass
    removed = 0
    for name in os.listdir(cache_dir):
        if _ours(name):
            try:
                os.remove(os.path.join(cache_dir, name))
                removed += 1
            except OSError:  # (another process removed it first)
                pass
    try:
        tmp = f"{stamp}.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(current + "\n")
        os.replace(tmp, stamp)
    except OSError:  # a cache we cannot write to: Numba will not write there either
        pass
    return removed
