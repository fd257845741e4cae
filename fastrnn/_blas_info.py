"""Which BLAS NumPy runs and which kernel it picked, for ``fastrnn info`` and benchmark
reports: half of a training call is large GEMMs, so the kernel decides much of its time.

``OPENBLAS_CORETYPE`` (with ``OPENBLAS_L2_SIZE``) forces OpenBLAS onto a kernel of the
user's choosing - some machines set it to an older one (sgemm at about half speed on an
AVX-512 core); and a CPU with AVX-512 runs fastest on OpenBLAS's AVX-512 kernels.
"""

import os

_AVX512_KERNELS = {"skylakex", "cooperlake", "sapphirerapids"}
_AVX512_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def blas():
    """``{"library", "version", "kernel", "threads", "warning"}`` of NumPy's BLAS (values
    None where threadpoolctl cannot tell; ``warning`` None when nothing is off)."""
    info = {"library": None, "version": None, "kernel": None, "threads": None,
            "warning": None}
    try:
        import numpy  # noqa: F401  (so that its BLAS is loaded)
        from threadpoolctl import threadpool_info
    except ImportError:
        info["warning"] = "threadpoolctl is not installed: the BLAS kernel is not known"
        return info
    for lib in threadpool_info():
        if lib.get("user_api") == "blas" and "numpy" in lib.get("filepath", ""):
            info.update(library=lib.get("internal_api"), version=lib.get("version"),
                        kernel=lib.get("architecture"), threads=lib.get("num_threads"))
            break
    forced = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
              if k in os.environ}
    kernel = (info["kernel"] or "").lower()
    if forced and info["library"] == "openblas":
        info["warning"] = (", ".join(f"{k}={v}" for k, v in forced.items()) + " forces "
                           "OpenBLAS's kernel choice; unset them for the fastest GEMMs")
    elif info["library"] == "openblas" and _AVX512_FLAGS <= _cpu_flags() and \
            kernel not in _AVX512_KERNELS:
        info["warning"] = (f"this CPU has AVX-512 but OpenBLAS runs its {info['kernel']} "
                           "kernel; a newer OpenBLAS (NumPy) would use the AVX-512 one")
    return info


def describe():
    """One line: library, version, kernel and threads, and the warning if any."""
    b = blas()
    if b["library"] is None:
        line = "blas: unknown"
    else:
        line = (f"blas: {b['library']} {b['version']}, {b['kernel']} kernel, "
                f"{b['threads']} threads")
    return line + (f" - WARNING: {b['warning']}" if b["warning"] else "")
