"""The kernel specialisations the gpu backend launches (CuPy-free, so that the compile test
can check them against ``instantiate.cu`` on machines without a GPU)."""

CELL_IDS = {"rnn_tanh": 0, "rnn_relu": 1, "rnn_sigmoid": 2, "lstm": 3, "gru": 4}
CTYPES = {"float32": "float", "float64": "double"}


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
