"""``torch.nn.RNN``, ``LSTM``, ``GRU`` and their cells, computed by fastrnn's kernels.

Each class subclasses the ``torch.nn`` class of the same name: same constructor, parameters,
``state_dict`` keys, ``repr`` and checks of inputs and states (torch's own). ``forward``
takes and returns what torch's does - a Tensor or a ``PackedSequence`` (sorted or not),
``hx`` optional, unbatched inputs - and runs :func:`._ops.rnn`.
"""

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .._checks import flag, probability
from ..kernels.contract import INITIAL_VALUES, PARAMETER_NAMES, weight_fields, weight_shapes
from ._ops import Config, rnn
from ._step import step

_DTYPES = (torch.float32, torch.float64)
_NO_LENGTHS = torch.empty(0, dtype=torch.int64)  # (every sequence runs all its steps)
_DEVICES = ("cpu", "cuda")


def _check_runnable(who, tensor, params=()):
    """fastrnn runs float32 and float64 on CPU and CUDA tensors: say so, never fall back;
    input and parameters must agree (a torch RNN module's parameters share one dtype and
    device: the first stands for all)."""
    if params and tensor.is_cpu and params[0].is_cpu and tensor.dtype in _DTYPES and (
            params[0].dtype == tensor.dtype):
        return  # (the common case, without building device objects)
    if tensor.dtype not in _DTYPES:
        raise TypeError(f"{who}: input dtype {tensor.dtype} is not supported; fastrnn runs "
                        "float32 and float64 (convert the model and inputs with .float() "
                        "or .double())")
    if tensor.device.type not in _DEVICES:
        raise RuntimeError(f"{who}: device {tensor.device} is not supported; fastrnn runs "
                           "on CPU tensors (its cpu backend) and CUDA tensors (its gpu "
                           "backend)")
    for p in params[:1]:
        if p.dtype not in _DTYPES or p.device.type not in _DEVICES:
            raise TypeError(f"{who}: parameters of dtype {p.dtype} on {p.device} are not "
                            "supported; fastrnn runs float32 and float64 on CPU and CUDA")
        if p.dtype != tensor.dtype or p.device != tensor.device:
            raise RuntimeError(f"{who}: input is {tensor.dtype} on {tensor.device} but the "
                               f"parameters are {p.dtype} on {p.device}; move one to the "
                               "other")


def _grad_wanted(*tensors):
    return torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in tensors)


def _exported(module, forward, input, hx):
    """torch.nn's forward of ``module`` for an exporter, or a clear error where fastrnn
    computes more than torch.nn's layer does."""
    for option in ("layer_norm", "zoneout"):
        if getattr(module, option):
            raise RuntimeError(f"fastrnn.torch.{type(module).__name__}: cannot export a layer "
                               f"with {option}={getattr(module, option)}: torch.nn's layer "
                               "(what the exporters write) has no such option")
    return forward(module, input, hx)


def _exporting():
    """Whether ``torch.onnx.export`` (either exporter) or ``torch.export`` is tracing the
    call: the modules then run torch.nn's own forward, which the ONNX exporters write as
    standard ONNX LSTM, GRU and RNN nodes (a cell's as its gate arithmetic), and which
    makes an exported program of torch's own operators, portable wherever torch runs; the
    numbers are the same."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()


def _gains(cell):
    """The LayerNorm gains of a layer-normalised ``cell``, in field order."""
    return [f for f in weight_fields(cell, bias=False, layer_norm=True) if f.startswith("ln_")]


def _with_options(module, text):
    """torch's ``repr`` text with fastrnn's options where they are set."""
    if module.layer_norm:
        text += ", layer_norm=True"
    if module.zoneout:
        text += f", zoneout={module.zoneout}"
    return text


class _Sequence:
    """The forward shared by RNN, LSTM and GRU (mixed into the torch classes), and what
    fastrnn adds to their constructors: ``layer_norm`` and ``zoneout`` (as
    :class:`fastrnn.LSTM`'s; the gains are the parameters ``ln_weight_ih_l{k}``, ...)."""

    _cell = None  # fastrnn's cell name, set per class or instance
    backend = None  # fastrnn's backend for this module's calls (None: dispatch chooses)
    layer_norm = False
    zoneout = 0.0

    def __init__(self, *args, layer_norm=False, zoneout=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self._options(layer_norm, zoneout)
        if layer_norm:
            self._add_layer_norm()

    def _options(self, layer_norm, zoneout):
        self.layer_norm = flag("layer_norm", layer_norm)
        self.zoneout = probability("zoneout", zoneout)

    def _add_layer_norm(self):
        """The gains of every layer and direction, after torch's parameters, each with its
        initial value (LayerNorm's 1 and 0)."""
        D = 2 if self.bidirectional else 1
        shapes = weight_shapes(self._cell, 1, self.hidden_size)
        p0 = self._flat_weights[0]
        for layer in range(self.num_layers):
            for d in range(D):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                for field in _gains(self._cell):
                    value = torch.full(shapes[field], INITIAL_VALUES[field], dtype=p0.dtype,
                                       device=p0.device)
                    self.register_parameter(PARAMETER_NAMES[field] + suffix,
                                            torch.nn.Parameter(value))

    def _fastrnn_weights(self):
        """The op's flat list: each layer's and direction's torch parameters, then its
        gains."""
        if not self.layer_norm:
            return list(self._flat_weights)
        per = len(self._flat_weights) // (self.num_layers * (2 if self.bidirectional else 1))
        gains = _gains(self._cell)
        out = []
        for k, name in enumerate(self._flat_weights_names[::per]):
            suffix = name[len("weight_ih"):]
            out += self._flat_weights[k * per:(k + 1) * per]
            out += [self._parameters[PARAMETER_NAMES[f] + suffix] for f in gains]
        return out

    def extra_repr(self):
        return _with_options(self, super().extra_repr())

    def flatten_parameters(self):
        """Harmless: fastrnn reads the parameters where they are."""

    def _run(self, input, hx, lstm):
        # (as torch's forward: parameters swapped in since - torch.func.functional_call,
        # stateless reparametrization - replace the cached list)
        self._update_flat_weights()
        who = f"fastrnn.torch.{type(self).__name__}"
        packed = isinstance(input, PackedSequence)
        if packed:
            rows = int(input.batch_sizes.sum())
            if rows != input.data.shape[0]:
                raise ValueError(f"input: a PackedSequence whose batch_sizes add up to {rows} "
                                 f"steps of data, but whose data has {input.data.shape[0]} "
                                 "(were lengths longer than the padded sequences given to "
                                 "pack_padded_sequence?)")
            padded, lengths = pad_packed_sequence(input, batch_first=False)
            batch_sizes, x, batched = input.batch_sizes, padded, True
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{type(self).__name__}: Expected input to be 2D or 3D, got "
                                 f"{input.dim()}D tensor instead")
            batched, lengths, batch_sizes = input.dim() == 3, None, None
            x = input if not batched else input.transpose(0, 1) if self.batch_first else input
            if not batched:
                x = x.unsqueeze(1)
        if x.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        D = 2 if self.bidirectional else 1
        B = x.shape[1]
        states = hx if lstm else (hx,) if hx is not None else None
        if states is not None:
            want = 2 if batched else 1
            for s in states:
                if s.dim() != want + 1:
                    raise RuntimeError(f"For {'batched 3-D' if batched else 'unbatched 2-D'} "
                                       f"input, hx{' and cx' if lstm else ''} should also be "
                                       f"{want + 1}-D but got {s.dim()}-D tensor")
            states = tuple(s if batched else s.unsqueeze(1) for s in states)
        else:
            LD, S = self.num_layers * D, getattr(self, "proj_size", 0) or self.hidden_size
            zeros = x.new_zeros((LD, B, S))
            states = (zeros, x.new_zeros((LD, B, self.hidden_size))) if lstm else (zeros,)
        params = self._fastrnn_weights()
        # torch's checks read the batch from the input in the user's layout (an unbatched
        # input as a batch of one, where batch_first puts the batch)
        if packed:
            check_input = input.data
        elif batched:
            check_input = input
        else:
            check_input = input.unsqueeze(0 if self.batch_first else 1)
        _check_runnable(who, x)
        self.check_forward_args(check_input, states if lstm else states[0], batch_sizes)
        _check_runnable(who, x, params)
        need = _grad_wanted(x, *states, *params)
        cx = states[1] if lstm else x.new_empty(0)
        lens = lengths if lengths is not None else _NO_LENGTHS
        config = Config(self._cell, self.num_layers, self.bidirectional, self.bias,
                        float(self.dropout), self.training, need, self.backend or "",
                        getattr(self, "proj_size", 0), self.layer_norm, self.zoneout)
        out, h_n, c_n, _ = rnn(x, states[0], cx, params, lens, config)
        if packed:
            sorted_idx = input.sorted_indices
            out_sorted = out if sorted_idx is None else out.index_select(1, sorted_idx)
            len_sorted = lengths if sorted_idx is None else lengths[sorted_idx.cpu()]
            data = pack_padded_sequence(out_sorted, len_sorted, enforce_sorted=True).data
            output = PackedSequence(data, batch_sizes, input.sorted_indices,
                                    input.unsorted_indices)
        elif not batched:
            output = out.squeeze(1)
        else:
            output = out.transpose(0, 1).contiguous() if self.batch_first else out
        if not batched:
            h_n, c_n = h_n.squeeze(1), c_n.squeeze(1) if lstm else c_n
        return output, ((h_n, c_n) if lstm else h_n)


class RNN(_Sequence, torch.nn.RNN):
    """``torch.nn.RNN`` (tanh or relu) computed by fastrnn's kernels; same arguments."""

    @property
    def _cell(self):
        return "rnn_" + self.nonlinearity

    def forward(self, input, hx=None):
        if _exporting():
            return _exported(self, torch.nn.RNN.forward, input, hx)
        return self._run(input, hx, lstm=False)


class GRU(_Sequence, torch.nn.GRU):
    """``torch.nn.GRU`` computed by fastrnn's kernels; same arguments."""

    _cell = "gru"

    def forward(self, input, hx=None):
        if _exporting():
            return _exported(self, torch.nn.GRU.forward, input, hx)
        return self._run(input, hx, lstm=False)


class LSTM(_Sequence, torch.nn.LSTM):
    """``torch.nn.LSTM`` computed by fastrnn's kernels; same arguments (``proj_size``
    included)."""

    _cell = "lstm"

    def forward(self, input, hx=None):
        if _exporting():
            if self.proj_size:  # (torch.nn.LSTM's export fails there too, or writes a
                # model ONNX Runtime cannot run)
                raise RuntimeError(f"fastrnn.torch.LSTM: torch.onnx.export cannot write an "
                                   f"LSTM with proj_size={self.proj_size}: ONNX's LSTM "
                                   "operator has no projection")
            return _exported(self, torch.nn.LSTM.forward, input, hx)
        if hx is not None and not (isinstance(hx, tuple) and len(hx) == 2):
            raise RuntimeError("fastrnn.torch.LSTM: hx must be a tuple (h_0, c_0)")
        return self._run(input, hx, lstm=True)


class _Step:
    """The forward shared by the step cells, and ``layer_norm`` and ``zoneout`` (as the
    layers'; parameters ``ln_weight_ih``, ...)."""

    backend = None  # fastrnn's backend for this module's calls (None: dispatch chooses)
    layer_norm = False
    zoneout = 0.0

    def __init__(self, *args, layer_norm=False, zoneout=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        _Sequence._options(self, layer_norm, zoneout)
        if layer_norm:
            shapes = weight_shapes(self._cell, 1, self.hidden_size)
            p0 = self.weight_ih
            for field in _gains(self._cell):
                value = torch.full(shapes[field], INITIAL_VALUES[field], dtype=p0.dtype,
                                   device=p0.device)
                self.register_parameter(PARAMETER_NAMES[field], torch.nn.Parameter(value))

    def extra_repr(self):
        return _with_options(self, super().extra_repr())

    def _step(self, input, hx, lstm):
        """One step, with torch's checks and messages (a cell has no dropout; training and
        eval mode differ only with zoneout)."""
        name = type(self).__name__
        who = f"fastrnn.torch.{name}"
        rank = input.dim()
        if rank not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {rank}D instead")
        if hx is not None:
            for idx, s in enumerate(hx if lstm else (hx,)):
                if s.dim() not in (1, 2):
                    what = f"hx[{idx}]" if lstm else "hidden"
                    raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got "
                                     f"{s.dim()}D instead")
        batched = rank == 2
        x = input if batched else input.unsqueeze(0)
        B = x.shape[0]
        if hx is None:
            zeros = x.new_zeros((B, self.hidden_size))
            states = (zeros, zeros) if lstm else (zeros,)
        else:
            states = hx if lstm else (hx,)
            if not batched:
                states = tuple(s.unsqueeze(0) for s in states)
        if x.shape[1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.shape[1]} "
                               f"expected {self.input_size}")
        for label, s in enumerate(states):
            if s.shape[0] != B:
                raise RuntimeError(f"Input batch size {B} doesn't match hidden{label} batch "
                                   f"size {s.shape[0]}")
            if s.dim() != 2 or s.shape[1] != self.hidden_size:
                got = s.shape[1] if s.dim() > 1 else "none"
                raise RuntimeError(f"hidden{label} has inconsistent hidden_size: got {got}, "
                                   f"expected {self.hidden_size}")
        p = self._parameters  # (what self.weight_ih reads, without Module.__getattr__)
        fields = weight_fields(self._cell, self.bias, layer_norm=self.layer_norm)
        params = [p[PARAMETER_NAMES[f]] for f in fields]
        _check_runnable(who, x, params)
        if self.hidden_size == 0:  # torch's empty state, still in the graph of the inputs
            link = sum(t.sum() for t in (x, *states, *params)) * 0
            h = x.new_zeros((B, 0)) + link
            h, c = (h, h.clone()) if batched else (h[0], h[0].clone())
            return (h, c) if lstm else h
        need = _grad_wanted(x, *states, *params)
        backend = self.backend or ""
        if x.is_cpu and not (torch.compiler.is_compiling()
                             or torch._C._are_functorch_transforms_active()):
            # (eager code on the CPU: the step straight on the kernel contract)
            out = step(self._cell, x, states[0], states[1] if lstm else None, fields, params,
                       backend, need, self.zoneout, self.training)
            h, c = out if lstm else (out, None)
        else:
            cx = states[1][None] if lstm else x.new_empty(0)
            _, h_n, c_n, _ = rnn(x[None], states[0][None], cx, params, _NO_LENGTHS,
                                 Config(self._cell, bias=self.bias, training=self.training,
                                        save=need, backend=backend,
                                        layer_norm=self.layer_norm, zoneout=self.zoneout))
            h, c = h_n[0], c_n[0] if lstm else None
        if not batched:
            h, c = h[0], c[0] if lstm else None
        return (h, c) if lstm else h


class RNNCell(_Step, torch.nn.RNNCell):
    """``torch.nn.RNNCell`` computed by fastrnn's kernels; same arguments."""

    @property
    def _cell(self):
        return "rnn_" + self.nonlinearity

    def forward(self, input, hx=None):
        if _exporting():
            return _exported(self, torch.nn.RNNCell.forward, input, hx)
        return self._step(input, hx, lstm=False)


class GRUCell(_Step, torch.nn.GRUCell):
    """``torch.nn.GRUCell`` computed by fastrnn's kernels; same arguments."""

    _cell = "gru"

    def forward(self, input, hx=None):
        if _exporting():
            return _exported(self, torch.nn.GRUCell.forward, input, hx)
        return self._step(input, hx, lstm=False)


class LSTMCell(_Step, torch.nn.LSTMCell):
    """``torch.nn.LSTMCell`` computed by fastrnn's kernels; same arguments."""

    _cell = "lstm"

    def forward(self, input, hx=None):
        if _exporting():
            return _exported(self, torch.nn.LSTMCell.forward, input, hx)
        return self._step(input, hx, lstm=True)
