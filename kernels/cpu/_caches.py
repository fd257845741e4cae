"""The size of a core's L2 cache, on which some of the backend's choices depend.

Read once from Linux's sysfs (``/sys/devices/system/cpu/cpu0/cache/index*/``: the data or
unified cache of level 2). Where that is not available (another OS, a container that
hides it), the backend assumes 2 MB, the L2 of the Xeon (Sapphire Rapids) on which its
thresholds were first measured.
"""

import os

DEFAULT_L2_BYTES = 2 << 20
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(text):
    """Bytes from sysfs's ``"512K"``, ``"2048K"``, ``"1M"`` or a plain number."""
    text = text.strip().upper()
    if text and text[-1] in _UNITS:
        return int(text[:-1]) * _UNITS[text[-1]]
    return int(text)


def l2_bytes(root="/sys/devices/system/cpu/cpu0/cache"):
    """Bytes of L2 of the CPU described under ``root``, or :data:`DEFAULT_L2_BYTES`."""
    try:
        for entry in sorted(os.listdir(root)):
            if not entry.startswith("index"):
                continue
            path = os.path.join(root, entry)
            with open(os.path.join(path, "level")) as f:
                level = f.read().strip()
            with open(os.path.join(path, "type")) as f:
                kind = f.read().strip()
            if level == "2" and kind in ("Data", "Unified"):
                with open(os.path.join(path, "size")) as f:
                    return _size(f.read())
    except (OSError, ValueError):
        pass
    return DEFAULT_L2_BYTES


L2_BYTES = l2_bytes()
