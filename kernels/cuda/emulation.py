"""The gpu backend's CUDA kernels run on the CPU: ``rnn.cu`` compiled as it is by the host
C++ compiler against ``emulation/cuda_host.h`` (CUDA's execution model on threads and
fibers), loaded with ctypes and driven by :mod:`.contract`, the code that prepares every
launch on a GPU. This checks the kernels' logic - indexing, barriers, both places the
weights can live, padding, reverse, every cell - on machines without a GPU; it says nothing
about their speed. Needs ``g++`` (or ``$CXX``) and pthreads.

    rt = Runtime(sms=3, smem_optin=48 * 1024)
    y, state_n, saved = rt.forward("lstm", x, State(h0, c0), Weights(w_ih, w_hh, b_ih, b_hh))
"""

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

import numpy as np

from . import contract
from ..contract import Sequence
from .names import all_names

_DIR = os.path.dirname(os.path.abspath(__file__))
_HOST = os.path.join(_DIR, "emulation")
# Dynamic shared memory of each emulated block (a thread_local array of the block's thread):
# as much as a block of the largest current GPUs may opt in to.
SMEM_LIMIT = 227 * 1024
_SOURCES = ("rnn.cu", "cells.cuh", "cell_ids.cuh", os.path.join("emulation", "cuda_host.h"),
            os.path.join("emulation", "cooperative_groups.h"))
_lock = threading.Lock()
_library = None


class EmulationUnavailableError(RuntimeError):
    """The host C++ compiler is missing or failed on the kernels."""


def _extern_shared_names():
    """The names the kernels give their dynamic shared memory (``extern __shared__``)."""
    with open(os.path.join(_DIR, "rnn.cu")) as f:
        source = f.read()
    names = sorted(set(re.findall(r"extern\s+__shared__[^;\[]*?(\w+)\s*\[\s*\]", source)))
    if not names:
        raise EmulationUnavailableError("rnn.cu declares no extern __shared__ array")
    return names


def _entry_source():
    """The C ABI of the library: one launcher per name expression of :mod:`.names`."""
    lines = ['#include "cuda_host.h"', "#include <cstdio>", "#include <string>",
             "#include <type_traits>", "#include <utility>", "",
             "// The blocks' dynamic shared memory. The kernels declare it `extern` at block",
             "// scope, where the compiler cannot see that it needs no dynamic initialisation",
             "// and calls its (Itanium ABI) TLS init function: an empty one is defined."]
    for name in _extern_shared_names():
        lines += [f"__attribute__((aligned(16))) thread_local unsigned char {name}"
                  f"[{SMEM_LIMIT}];",
                  f'extern "C" void _ZTH{len(name)}{name}() {{}}']
    lines += [
             '#include "rnn.cu"', "",
             "namespace {",
             "template <typename... A, std::size_t... I>",
             "void call(void (*f)(A...), void** args, std::index_sequence<I...>) {",
             "    f(*static_cast<std::remove_reference_t<A>*>(args[I])...);",
             "}",
             "template <typename... A>",
             "std::string run(void (*f)(A...), unsigned blocks, unsigned threads, void** args) {",
             "    return fastrnn_host::launch(dim3{blocks}, dim3{threads},",
             "        [=] { call(f, args, std::index_sequence_for<A...>{}); });",
             "}",
             "struct Entry {",
             "    const char* name;",
             "    std::string (*launch)(unsigned, unsigned, void**);",
             "};",
             "const Entry kEntries[] = {"]
    for name in all_names():
        lines.append(f'    {{"{name}", [](unsigned b, unsigned t, void** a) '
                     f'{{ return run(&{name}, b, t, a); }}}},')
    lines += ["};",
              "}  // namespace",
              "",
              'extern "C" int fastrnn_host_launch(const char* name, unsigned blocks,',
              "        unsigned threads, unsigned long smem, void** args, char* error,",
              "        unsigned long error_size) {",
              "    std::string message;",
              f"    if (smem > {SMEM_LIMIT}) message = \"more dynamic shared memory than a block"
              " has\";",
              "    else {",
              "        message = \"no kernel of that name\";",
              "        for (const Entry& e : kEntries)",
              "            if (std::string(e.name) == name) { message = e.launch(blocks, threads,"
              " args); break; }",
              "    }",
              "    std::snprintf(error, error_size, \"%s\", message.c_str());",
              "    return message.empty() ? 0 : 1;",
              "}", ""]
    return "\n".join(lines)


def _compiler():
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise EmulationUnavailableError("no host C++ compiler: install g++ or set CXX")
    return cxx


def build(cache_dir=None):
    """Compile the kernels for the CPU once per source version; return the library's path.

    The library is cached in ``cache_dir`` (default: ``$FASTRNN_EMULATION_DIR``, else the
    system's temporary folder), named by a hash of the sources and options."""
    cxx = _compiler()
    entry = _entry_source()
    flags = ["-std=c++17", "-O1", "-shared", "-fPIC", "-pthread", "-w",
             f"-I{_HOST}", f"-I{_DIR}"]
    digest = hashlib.sha256()
    for rel in _SOURCES:
        with open(os.path.join(_DIR, rel), "rb") as f:
            digest.update(f.read())
    digest.update(entry.encode())
    digest.update(" ".join([cxx] + flags).encode())
    folder = cache_dir or os.environ.get("FASTRNN_EMULATION_DIR") or tempfile.gettempdir()
    path = os.path.join(folder, f"fastrnn-cuda-host-{digest.hexdigest()[:16]}.so")
    if os.path.exists(path):
        return path
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src = os.path.join(tmp, "entry.cpp")
        with open(src, "w") as f:
            f.write(entry)
        out = os.path.join(tmp, "lib.so")
        result = subprocess.run([cxx, *flags, "-o", out, src], capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise EmulationUnavailableError(
                f"{cxx} could not compile the CUDA kernels for the CPU:\n{result.stderr}")
        os.replace(out, path)  # (atomic: another process may be building the same)
    return path


def _load():
    global _library
    with _lock:
        if _library is None:
            lib = ctypes.CDLL(build())
            fn = lib.fastrnn_host_launch
            fn.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_ulong,
                           ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_ulong]
            fn.restype = ctypes.c_int
            _library = fn
    return _library


def _argument(value):
    """A ctypes object holding ``value`` as the kernel parameter receives it."""
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise ValueError("emulated launch: arrays must be C-contiguous")
        return ctypes.c_void_p(value.ctypes.data)
    if isinstance(value, np.int32):
        return ctypes.c_int32(int(value))
    raise TypeError(f"emulated launch: unsupported argument type {type(value).__name__}")


class _PoisonedNumPy:
    """NumPy whose ``empty`` fills floating-point arrays with NaN: what a kernel leaves
    unwritten then shows in the results instead of whatever the memory held before."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float):
        dtype = np.dtype(dtype)
        return np.full(shape, np.nan, dtype) if dtype.kind == "f" else np.empty(shape, dtype)


class Runtime:
    """The runtime of :mod:`.contract` on the CPU, for NumPy arrays.

    ``sms`` plays the device's multiprocessor count (how many blocks a layer gets),
    ``smem_optin`` the shared memory a block may opt in to (0 keeps every weight in global
    memory); with ``poison`` every floating-point buffer the launch code allocates starts as
    NaN."""

    def __init__(self, sms=4, smem_optin=48 * 1024, poison=True):
        self.xp = _PoisonedNumPy() if poison else np
        self.sms = sms
        self.smem_optin = min(smem_optin, SMEM_LIMIT)
        self.launches = []  # (name, blocks, threads, smem) of every launch, for the tests

    @staticmethod
    def matmul(a, b, out):
        return np.matmul(a, b, out=out)

    def launch(self, name, blocks, threads, smem, args):
        fn = _load()
        held = [_argument(a) for a in args]
        pointers = (ctypes.c_void_p * len(held))(
            *[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in held])
        error = ctypes.create_string_buffer(512)
        self.launches.append((name, blocks, threads, smem))
        if fn(name.encode(), blocks, threads, smem, pointers, error, len(error)) != 0:
            raise RuntimeError(f"emulated launch of {name}: {error.value.decode()}")

    def forward(self, cell, x, state, weights, seq=Sequence(), training=True, zoneout=None):
        """Kernel contract forward (:mod:`..contract`), run by the CUDA kernels on the
        CPU."""
        return contract.forward(self, cell, x, state, weights, seq, training, zoneout)

    def backward(self, cell, saved, dy, dstate_n):
        """Kernel contract backward (:mod:`..contract`), run by the CUDA kernels on the
        CPU."""
        return contract.backward(self, cell, saved, dy, dstate_n)


if __name__ == "__main__":  # python -m fastrnn.kernels.cuda.emulation: build and say where
    sys.stdout.write(build() + "\n")
