"""The ``fastrnn`` command."""

import argparse
import os
import platform
import sys


def info_lines():
    """Versions, backends (and why any is unavailable) and thread settings, as text lines."""
    import numpy as np

    from . import __version__, backends, get_backend

    lines = [f"fastrnn {__version__}", f"python {platform.python_version()} "
             f"({platform.machine()}, {os.cpu_count()} CPUs)", f"numpy {np.__version__}"]
    for mod in ("numba", "cupy", "torch"):
        try:
            lines.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            lines.append(f"{mod} not installed")
    lines.append(f"selected backend: {get_backend()}")
    for name, rep in backends().items():
        state = "available" if rep["available"] else f"unavailable: {rep['reason']}"
        lines.append(f"  {name:6s} ({rep['array_module']} arrays) {state}")
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "FASTRNN_BACKEND"):
        lines.append(f"{var}={os.environ.get(var, '(unset)')}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastrnn", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="versions, backends and why any is unavailable")
    args = parser.parse_args(argv)
    if args.command in (None, "info"):
        print("\n".join(info_lines()))
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
