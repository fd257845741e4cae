"""fastrnn: fast recurrent networks (RNN, LSTM, GRU) on NumPy and CuPy arrays.

Layers mirror ``torch.nn``; one flag picks the backend (``numpy`` reference, ``cpu`` Numba
kernels, ``gpu`` CUDA kernels). See README.md and docs/architecture.md.
"""

__version__ = "0.1.0"

from . import losses, nn, optim
from .cell_layers import GRUCell, LSTMCell, RNNCell
from .checkpoint import load, save
from .dispatch import BackendUnavailableError, backends, get_backend, set_backend
from .kernels.contract import Sequence, State, Weights
from .layers import GRU, LSTM, RNN
from .memory import cache_info, empty_cache, set_cache_limit
from .module import Module, Parameter
from .quantization import quantize

__all__ = [
    "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "Module", "Parameter",
    "backends", "set_backend", "get_backend", "BackendUnavailableError", "__version__",
    "nn", "optim", "losses", "save", "load", "empty_cache", "set_cache_limit", "cache_info",
    "Weights", "State", "Sequence", "quantize",
]
