"""An exact fingerprint of an array's contents, to notice in-place changes.

``fingerprint(a)`` is ``sum(word[i] * (2*i + 1)) mod 2**64`` over the array's 64-bit words
(32-bit words when its size is not a multiple of 8 bytes): a change of any one element
changes it (an odd multiplier is invertible modulo 2**64, and a change within a word is
below 2**64), and so does swapping two different elements; equal contents always give equal
fingerprints, whatever the thread count. One pass over the array at memory speed (8 MB in
about 0.4 ms), compiled with Numba where it can run (NumPy or CuPy arithmetic otherwise).
"""

import numpy as np


def _words_numpy(xp, u):
    odd = xp.arange(1, 2 * u.size, 2, dtype=xp.uint64)
    return int((u.astype(xp.uint64) * odd).sum(dtype=xp.uint64))


def _word_view(xp, a):
    flat = xp.ascontiguousarray(a).reshape(-1)
    return flat.view(xp.uint64 if flat.nbytes % 8 == 0 else xp.uint32)


def _sum_words(u):  # compiled on first use
    h = np.uint64(0)
    for i in range(u.size):
        h += np.uint64(u[i]) * np.uint64(2 * i + 1)
    return h


_words = []  # the compiled _sum_words (None where Numba is missing), once looked up


def _compiled():
    """``_sum_words`` compiled by Numba, made on the first fingerprint (importing Numba
    takes a good part of a second: not at ``import fastrnn``); None without Numba."""
    if not _words:
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a dependency
            _words.append(None)
            return None
        try:
            _words.append(numba.njit(cache=True, nogil=True)(_sum_words))
        except RuntimeError:  # no writable cache directory: compile in every process
            _words.append(numba.njit(nogil=True)(_sum_words))
    return _words[0]


def fingerprint(a):
    """The fingerprint of array ``a`` (NumPy or CuPy; any dtype of 4 or 8 bytes) as an int."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy
        return _words_numpy(cupy, _word_view(cupy, a))
    u = _word_view(np, a)
    words = _compiled()
    if words is None:
        return _words_numpy(np, u)
    return int(words(u))
