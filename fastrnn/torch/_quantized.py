"""``fastrnn.torch.quantize``: PyTorch recurrent layers and cells for inference with int8 or
bfloat16 weights, computed by fastrnn's quantized layers (:func:`fastrnn.quantize`)."""

import copy

import numpy as np
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .. import cell_layers, layers
from ..kernels.quantize import check_format
from ..quantization import quantize as quantize_native

_LAYERS = {torch.nn.RNN: layers.RNN, torch.nn.LSTM: layers.LSTM, torch.nn.GRU: layers.GRU}
_CELLS = {torch.nn.RNNCell: cell_layers.RNNCell, torch.nn.LSTMCell: cell_layers.LSTMCell,
          torch.nn.GRUCell: cell_layers.GRUCell}


def _kind(module):
    """The torch.nn class ``module`` is (fastrnn.torch's classes subclass them), or None."""
    for cls in (*_LAYERS, *_CELLS):
        if isinstance(module, cls):
            return cls
    return None


def _native(module, kind):
    """fastrnn's float32 layer or cell with ``module``'s configuration and weights."""
    p0 = next(module.parameters())
    if p0.dtype != torch.float32 or not p0.is_cpu:
        raise TypeError(f"{type(module).__name__}: quantize a float32 model on the CPU (its "
                        f"parameters are {p0.dtype} on {p0.device}); convert it with "
                        ".float().cpu() first")
    kw = dict(bias=module.bias, layer_norm=getattr(module, "layer_norm", False),
              zoneout=getattr(module, "zoneout", 0.0))
    if kind in (torch.nn.RNN, torch.nn.RNNCell):
        kw["nonlinearity"] = module.nonlinearity
    if kind in _CELLS:
        native = _CELLS[kind](module.input_size, module.hidden_size, **kw)
    else:
        kw.update(num_layers=module.num_layers, dropout=module.dropout,
                  bidirectional=module.bidirectional)
        if kind is torch.nn.LSTM:
            kw["proj_size"] = module.proj_size
        native = _LAYERS[kind](module.input_size, module.hidden_size, **kw)
    native.load_state_dict({k: v.detach().numpy() for k, v in module.state_dict().items()})
    return native


def _array(t):
    """A buffer's memory as the NumPy array the native layer reads (bfloat16 as uint16)."""
    if t.dtype == torch.bfloat16:
        return t.detach().view(torch.int16).numpy().view(np.uint16)
    return t.detach().numpy()


def _tensor(a):
    return torch.from_numpy(np.ascontiguousarray(a))


class Quantized(torch.nn.Module):
    """A ``torch.nn`` RNN, LSTM, GRU or cell (or fastrnn.torch's) for inference with its
    weights in int8 or bfloat16, made by :func:`quantize`: called as the module it replaces
    (tensors or a ``PackedSequence``, ``hx``, unbatched inputs, ``batch_first``), computed by
    :func:`fastrnn.quantize`'s layer, so the numbers equal fastrnn's quantized layer.

    Its state (``state_dict``) is buffers with the module's names: ``weight_hh_l0`` as int8
    (with ``weight_hh_l0_scale``) or bfloat16, the biases float32. Inference only: a call in
    training mode, or with an input that requires grad while grad is enabled, is an error;
    float32 CPU tensors only."""

    def __init__(self, module, dtype):
        super().__init__()
        kind = _kind(module)
        if kind is None:
            raise TypeError(f"module: expected a torch.nn RNN, LSTM, GRU or cell, got "
                            f"{type(module).__name__}")
        self.kind, self.dtype = kind, check_format("dtype", dtype)
        self.batch_first = getattr(module, "batch_first", False)
        self.native = quantize_native(_native(module, kind), dtype)
        self._repr = f"{type(module).__name__}({module.extra_repr()})"
        for name, a in self.native._named_state():
            t = torch.from_numpy(a)
            self.register_buffer(name, t.view(torch.bfloat16) if a.dtype == np.uint16 else t)
        self.eval()

    def extra_repr(self):
        return f"{self._repr}, dtype={self.dtype!r}"

    def _bind(self, who, tensors):
        """Point the native layer at this module's buffers (the state a ``load_state_dict``
        or a ``to`` changed); check the inputs."""
        if self.training:
            raise RuntimeError(f"{who}: a quantized module runs inference only; call .eval()")
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            raise RuntimeError(f"{who}: a quantized module has no backward; run it under "
                               "torch.no_grad() or torch.inference_mode(), or pass inputs "
                               "that do not require grad")
        for t in (*tensors, *self._buffers.values()):
            if t is not None and (not t.is_cpu or t.dtype == torch.float64):
                raise TypeError(f"{who}: runs float32 CPU tensors, got {t.dtype} on "
                                f"{t.device}")
        native = self.native
        for name, t in self._buffers.items():
            a = _array(t)
            if name in native._parameters:
                native._parameters[name].data = a
            else:
                native._buffers[name] = a

    def forward(self, input, hx=None):
        who = f"fastrnn.torch.Quantized({self.kind.__name__})"
        lstm = self.kind in (torch.nn.LSTM, torch.nn.LSTMCell)
        states = (hx if lstm else (hx,)) if hx is not None else ()
        packed = isinstance(input, PackedSequence)
        self._bind(who, ((input.data if packed else input), *states))
        if self.kind in _CELLS:
            out = self.native(input.numpy(), tuple(s.numpy() for s in hx) if lstm and hx
                              is not None else None if hx is None else hx.numpy())
            return (_tensor(out[0]), _tensor(out[1])) if lstm else _tensor(out)
        lengths = None
        if packed:
            padded, lengths = pad_packed_sequence(input, batch_first=False)
            x = padded
        else:
            x = input.transpose(0, 1) if self.batch_first and input.dim() == 3 else input
        h0 = tuple(s.numpy() for s in states) if states else None
        out, h_n = self.native(x.numpy(), (h0 if lstm else h0[0]) if h0 else None,
                               None if lengths is None else lengths.numpy())
        out = _tensor(out)
        h_n = (_tensor(h_n[0]), _tensor(h_n[1])) if lstm else _tensor(h_n)
        if packed:
            sorted_idx = input.sorted_indices
            out = out if sorted_idx is None else out.index_select(1, sorted_idx)
            lens = lengths if sorted_idx is None else lengths[sorted_idx]
            data = pack_padded_sequence(out, lens, enforce_sorted=True).data
            return PackedSequence(data, input.batch_sizes, input.sorted_indices,
                                  input.unsorted_indices), h_n
        if self.batch_first and input.dim() == 3:
            out = out.transpose(0, 1).contiguous()
        return out, h_n


def quantize(model, dtype):
    """A copy of the PyTorch ``model`` whose RNN, LSTM, GRU layers and cells (torch.nn's or
    fastrnn.torch's; ``model`` itself may be one) are :class:`Quantized` modules holding
    their weights in ``dtype`` (``"int8"`` or ``"bfloat16"``, as :func:`fastrnn.quantize`),
    in eval mode, for inference; ``model`` is left as it is. Other modules are copied as they
    are."""
    check_format("dtype", dtype)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if _kind(model) is not None:
        return Quantized(model, dtype)
    out = copy.deepcopy(model)
    found = False
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if _kind(child) is not None:
                setattr(parent, name, Quantized(child, dtype))
                found = True
    if not found:
        raise ValueError(f"model: {type(model).__name__} holds no RNN, LSTM, GRU or cell to "
                         "quantize")
    return out.eval()
