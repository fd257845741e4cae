"""The kernel specialisations the gpu backend launches and the compile options that give the
CUDA sources the cells of :mod:`..cells` (CuPy-free, so that the compile test can check them
against ``instantiate.cu`` on machines without a GPU)."""

from ..cells import CELLS

CELL_IDS = {name: spec.id for name, spec in CELLS.items()}
CTYPES = {"float32": "float", "float64": "double"}


def defines():
    """The ``-D`` options every compile of the CUDA sources takes: the cells' ids (the enum
    ``Cell``) and gate counts, from :data:`..cells.CELLS`."""
    # (one option a value: nvcc splits option values at commas)
    out = [f"-DFASTRNN_NUM_CELLS={len(CELLS)}"]
    for spec in CELLS.values():
        out += [f"-DFASTRNN_ID_{spec.name.upper()}={spec.id}",
                f"-DFASTRNN_GATES_{spec.name.upper()}={spec.gates}"]
    return tuple(out)


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
