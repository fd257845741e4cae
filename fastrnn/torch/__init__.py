"""The PyTorch bridge: drop-in ``torch.nn`` recurrent layers computed by fastrnn.

``fastrnn.torch.LSTM`` is a ``torch.nn.LSTM`` (``isinstance`` holds, ``state_dict`` and
``repr`` are torch's) whose forward and backward run fastrnn's kernels: CPU tensors on the
cpu backend as NumPy views, CUDA tensors on the gpu backend through DLPack. Change one
import, or call :func:`convert` on an existing model::

    from fastrnn.torch import LSTM          # instead of torch.nn.LSTM
    model = fastrnn.torch.convert(model)    # or swap every RNN/LSTM/GRU (and cell) inside

Autograd gives gradients for the input, the states and every parameter; the operators are
``torch.library`` custom ops with fake implementations, so ``torch.compile(model,
fullgraph=True)`` works. This module imports torch; nothing else in fastrnn does.
"""

import torch

from ._modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from ._quantized import Quantized, quantize

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "convert",
           "SAFE_GLOBALS", "quantize", "Quantized"]

# Dynamo refuses to trace any torch.nn.RNN/LSTM/GRU instance unless told it may (its own
# modules run one opaque kernel); fastrnn's are made of custom ops with fake implementations
# and trace whole. (torch's own RNN modules then meet Dynamo's experimental support too:
# convert them.)
torch._dynamo.config.allow_rnn = True

_SWAPS = {torch.nn.RNN: RNN, torch.nn.LSTM: LSTM, torch.nn.GRU: GRU,
          torch.nn.RNNCell: RNNCell, torch.nn.LSTMCell: LSTMCell, torch.nn.GRUCell: GRUCell}
# For torch.load(..., weights_only=True) of whole models:
# ``with torch.serialization.safe_globals(fastrnn.torch.SAFE_GLOBALS): torch.load(f)``.
SAFE_GLOBALS = list(_SWAPS.values())


def convert(model):
    """Swap every ``torch.nn`` RNN, LSTM, GRU and cell inside ``model`` (or ``model``
    itself) for fastrnn's, in place: same parameters (the very tensors), device, dtype and
    training mode (``proj_size`` included). Returns the model."""
    for module in list(model.modules()):
        cls = _SWAPS.get(type(module))
        if cls is not None:
            module.__class__ = cls
    return model
