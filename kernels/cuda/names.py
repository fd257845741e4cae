"""The kernel specialisations the gpu backend launches, and ``cell_ids.cuh``: the cells of
:mod:`..cells` for the CUDA sources, generated from there (CuPy-free, so that the compile
test can check both on machines without a GPU). ``python -m fastrnn.kernels.cuda.names``
writes the header again after a change to the cells."""

import os

from ..cells import CELLS

HEADER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cell_ids.cuh")

CELL_IDS = {name: spec.id for name, spec in CELLS.items()}
CTYPES = {"float32": "float", "float64": "double"}


def cell_header():
    """The text of ``cell_ids.cuh``: each cell's id (the values of the enum ``Cell``) and
    gate count, from :data:`..cells.CELLS`, and ``FASTRNN_EACH_CELL(X)``, which applies a
    macro to every id (``instantiate.cu`` instantiates the kernels of every cell with it)."""
    lines = ["// Generated from kernels/cells.py by kernels/cuda/names.py (cell_header); do not",
             "// edit: tests/test_cuda_compile.py fails when the two disagree.",
             "#pragma once", "", f"#define FASTRNN_NUM_CELLS {len(CELLS)}"]
    for spec in CELLS.values():
        lines += [f"#define FASTRNN_ID_{spec.name.upper()} {spec.id}",
                  f"#define FASTRNN_GATES_{spec.name.upper()} {spec.gates}"]
    each = " ".join(f"X({spec.id})" for spec in CELLS.values())
    lines.append(f"#define FASTRNN_EACH_CELL(X) {each}")
    return "\n".join(lines) + "\n"


def _flag(value):
    return "true" if value else "false"


def forward_name(ctype, cell, training, on_chip):
    return f"rnn_forward<{ctype}, {CELL_IDS[cell]}, {_flag(training)}, {_flag(on_chip)}>"


def backward_name(ctype, cell, on_chip):
    return f"rnn_backward<{ctype}, {CELL_IDS[cell]}, {_flag(on_chip)}>"


def all_names():
    """Every name expression, in the form NVRTC and c++filt both print."""
    names = []
    for ctype in CTYPES.values():
        for cell in CELL_IDS:
            for on_chip in (True, False):
                for training in (True, False):
                    names.append(forward_name(ctype, cell, training, on_chip))
                names.append(backward_name(ctype, cell, on_chip))
    return names


if __name__ == "__main__":
    with open(HEADER, "w") as f:
        f.write(cell_header())
