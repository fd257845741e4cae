"""fastrnn's recurrent networks as PyTorch custom operators with autograd.

``fastrnn::rnn`` runs :func:`fastrnn.functional.rnn` on the tensors' memory (CPU tensors as
NumPy views, CUDA tensors as CuPy arrays through DLPack: no copies) and returns the output,
the final states and a handle to what backward needs; ``fastrnn::rnn_backward`` takes the
handle and the output gradients and returns every input gradient. Both have fake (meta)
implementations, so ``torch.compile(model, fullgraph=True)`` traces through them, and the
pair is registered as the first operator's autograd formula.

Shapes (docs/architecture.md legend): ``x [T,B,I]`` (time-major), ``hx, cx [L*D,B,H]``,
``weights`` the layer's flat list (``w_ih, w_hh[, b_ih, b_hh][, w_hr]`` per layer and
direction, as torch.nn's ``_flat_weights``, then a layer-normalised one's gains ``ln_ih,
ln_hh[, ln_c, ln_c_bias]``: the order of ``fastrnn.kernels.contract.Weights``), ``lengths
[B]`` int64 on the CPU or empty (all ``T``); with ``proj_size = P > 0`` (an LSTM's
projection) ``hx [L*D,B,P]`` and outputs ``D*P`` wide.
Everything else a call needs is one :class:`Config`, which the operator takes encoded as a
string (one schema, whatever the options).
"""

import ast
import itertools
import weakref
from typing import NamedTuple

import numpy as np
import torch

from .. import functional
from ..kernels.cells import get_cell
from ..kernels.contract import Weights, weight_fields

_contexts = {}  # handle -> [what rnn_backward needs, handles referring to it]
_handles = itertools.count(1)


class Config(NamedTuple):
    """What a call computes besides its tensors: the cell (a name of
    ``fastrnn.kernels.cells.CELLS``), the layer's options, the mode (``training``: dropout
    acts; ``save``: keep what backward needs) and the backend (``""``: dispatch
    chooses)."""

    cell: str
    num_layers: int = 1
    bidirectional: bool = False
    bias: bool = True
    dropout: float = 0.0
    training: bool = False
    save: bool = False
    backend: str = ""
    proj_size: int = 0
    layer_norm: bool = False
    zoneout: float = 0.0

    def encode(self):
        """The config as the operator's ``config`` string (Python literals: what
        ``torch.compile`` traces through)."""
        return ";".join([repr(v) for v in self])

    @classmethod
    def decode(cls, text):
        return cls(*[ast.literal_eval(v) for v in text.split(";")])


class _TorchUniform:
    """Dropout masks from torch's generator, so that ``torch.manual_seed`` repeats a run."""

    def __init__(self, device):
        self.device = device

    def random(self, shape):
        u = torch.rand(shape, dtype=torch.float64, device=self.device)
        return memory_of(u)


def memory_of(t):
    """The tensor's memory as a NumPy (CPU) or CuPy (CUDA) array, without a copy."""
    t = t.detach()
    if t.is_cpu:
        return t.numpy()
    import cupy
    return cupy.from_dlpack(t)


def _tensor(a, like):
    """``a`` as a tensor, C-contiguous whatever strides the kernels gave it (the fake
    kernels promise contiguous results); None as an empty tensor."""
    if a is None:
        return like.new_empty(0)
    if isinstance(a, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(a))
    return torch.from_dlpack(a).contiguous()


def _stream(tensor):
    """Run CuPy work on torch's current stream of ``tensor``'s device (nothing to do on the
    CPU)."""
    if not tensor.is_cuda:
        return _NO_STREAM
    device = tensor.device
    import cupy
    return cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)


class _NoStream:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_STREAM = _NoStream()


def _groups(weights, config):
    """:func:`fastrnn.functional.rnn`'s :class:`Weights` from the module's flat list (in
    each layer's and direction's torch order, which is the fields' order)."""
    fields = weight_fields(config.cell, config.bias, config.proj_size > 0, config.layer_norm)
    arrays = iter([memory_of(w) for w in weights])
    return [Weights(**dict(zip(fields, arrays))) for _ in range(len(weights) // len(fields))]


def _hold(handle, keys):
    """``handle`` (a tensor) refers to the contexts ``keys``: each is dropped once every
    handle that refers to it is gone (a forward's own, and under ``vmap`` the stacked one)."""
    for key in keys:
        _contexts[key][1] += 1
    weakref.finalize(handle, _release, keys)


def _release(keys):
    for key in keys:
        entry = _contexts.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                del _contexts[key]


def _compute(x, hx, cx, weights, lengths, config, guard=True):
    """:func:`fastrnn.functional.rnn` on the tensors' memory: output, h_n, c_n (empty but
    for the LSTM), and what backward needs (None unless ``config.save``). ``guard``: as in
    :func:`fastrnn.functional.rnn` (False where autograd saved the tensors)."""
    c = config
    with _stream(x):
        out, h_n, c_n, ctx = functional.rnn(
            c.cell, memory_of(x), _groups(weights, c), memory_of(hx),
            memory_of(cx) if c.cell == "lstm" else None, num_layers=c.num_layers,
            bidirectional=c.bidirectional,
            lengths=lengths.numpy() if lengths.numel() else None, dropout=c.dropout,
            zoneout=c.zoneout, training=c.training, save=c.save,
            rng=_TorchUniform(x.device) if c.training and (c.dropout or c.zoneout) else None,
            backend=c.backend or None, guard=guard)
    return _tensor(out, x), _tensor(h_n, x), _tensor(c_n, x), ctx


def _rnn(x: torch.Tensor, hx: torch.Tensor, cx: torch.Tensor, weights: list[torch.Tensor],
         lengths: torch.Tensor, config: str
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output ``[T,B,D*H]``, ``h_n``, ``c_n`` (empty but for the LSTM) and a handle
    (int64 scalar; 0 when nothing was saved); ``config``: :meth:`Config.encode`'s."""
    return _with_handle(*_compute(x, hx, cx, weights, lengths, Config.decode(config)))


def _with_handle(out, h_n, c_n, ctx):
    """:func:`_compute`'s results with ``ctx`` behind a handle tensor."""
    handle = torch.zeros((), dtype=torch.int64)
    if ctx is not None:
        key = next(_handles)
        _contexts[key] = [ctx, 0]
        handle.fill_(key)
        _hold(handle, [key])
    return out, h_n, c_n, handle


rnn_op = torch.library.custom_op("fastrnn::rnn", mutates_args=())(_rnn)


def rnn(x, hx, cx, weights, lengths, config):
    """:func:`rnn_op` under ``torch.compile``; otherwise the same computation without the
    operator's dispatch (0.1-1 ms a call): directly when it saves nothing for backward
    (``config.save`` False), else through :class:`_RNN`, whose autograd formula and
    ``vmap`` rule serve eager code and ``torch.func``. ``config``: a :class:`Config`."""
    if torch.compiler.is_compiling():
        return rnn_op(x, hx, cx, weights, lengths, config.encode())
    if torch._C._are_functorch_transforms_active():
        return _RNN.apply(x, hx, cx, lengths, config, *weights)
    if config.save:
        return _RNNEager.apply(x, hx, cx, lengths, config, *weights)
    return _compute(x, hx, cx, weights, lengths, config)


@rnn_op.register_fake
def _rnn_fake(x, hx, cx, weights, lengths, config):
    c = Config.decode(config)
    T, B, _ = x.shape
    LD = c.num_layers * (2 if c.bidirectional else 1)
    S = weights[1].shape[1]  # the state's size: H, or proj_size
    H = weights[1].shape[0] // get_cell(c.cell).gates
    c_n = x.new_empty((LD, B, H)) if c.cell == "lstm" else x.new_empty(0)
    return (x.new_empty((T, B, LD // c.num_layers * S)), x.new_empty((LD, B, S)), c_n,
            x.new_empty((), dtype=torch.int64))


def _rnn_backward(handle, grad_out, grad_hn, grad_cn, x, hx, cx, weights):
    """``[grad_x, grad_hx, grad_cx, *grad_weights]`` for the forward behind ``handle``
    (``x``, ``hx``, ``cx`` and ``weights`` give the shapes and the device)."""
    entry = _contexts.get(int(handle))
    ctx = entry[0] if entry is not None else None
    if ctx is None:
        raise RuntimeError("fastrnn: nothing was saved for this backward (the forward ran "
                           "without gradients, or its graph was already freed)")
    with _stream(x):
        g_out = memory_of(grad_out.contiguous())
        dx, dh0, dc0, dws = functional.rnn_backward(
            ctx, g_out, memory_of(grad_hn.contiguous()),
            memory_of(grad_cn.contiguous()) if grad_cn.numel() else None)
    grads = [_tensor(dx, x), _tensor(dh0, x), _tensor(dc0, x)]
    for group in dws:
        grads += [_tensor(g, x) for g in group if g is not None]
    return grads


@torch.library.custom_op("fastrnn::rnn_backward", mutates_args=())
def rnn_backward_op(handle: torch.Tensor, grad_out: torch.Tensor, grad_hn: torch.Tensor,
                    grad_cn: torch.Tensor, x: torch.Tensor, hx: torch.Tensor,
                    cx: torch.Tensor, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`_rnn_backward` as an operator (what ``torch.compile`` traces)."""
    return _rnn_backward(handle, grad_out, grad_hn, grad_cn, x, hx, cx, weights)


@rnn_backward_op.register_fake
def _rnn_backward_fake(handle, grad_out, grad_hn, grad_cn, x, hx, cx, weights):
    # contiguous, as the real kernel returns them (``empty_like`` would copy the strides of
    # a transposed or permuted input)
    return [t.new_empty(t.shape) for t in (x, hx, cx, *weights)]


def _setup_context(ctx, inputs, output):
    x, hx, cx, weights, _, config = inputs
    ctx.save_for_backward(output[3], x, hx, cx, *weights)
    ctx.lstm = Config.decode(config).cell == "lstm"
    ctx.out_shape = output[0].shape


def _grads_in(ctx, grad_out, grad_hn, grad_cn):
    """The saved tensors and the output gradients, zeros where autograd gave None."""
    handle, x, hx, cx, *weights = ctx.saved_tensors
    grad_out = grad_out if grad_out is not None else x.new_zeros(ctx.out_shape)
    grad_hn = grad_hn if grad_hn is not None else torch.zeros_like(hx)
    if not ctx.lstm:
        grad_cn = cx.new_empty(0)
    elif grad_cn is None:
        grad_cn = torch.zeros_like(cx)
    return handle, grad_out, grad_hn, grad_cn, x, hx, cx, weights


def _backward(ctx, grad_out, grad_hn, grad_cn, _grad_handle):
    handle, g_out, g_hn, g_cn, x, hx, cx, weights = _grads_in(ctx, grad_out, grad_hn, grad_cn)
    dx, dh, dc, *dws = rnn_backward_op(handle, g_out, g_hn, g_cn, x, hx, cx, weights)
    need = ctx.needs_input_grad
    return (dx if need[0] else None, dh if need[1] else None,
            dc if ctx.lstm and need[2] else None, dws, None, None)


DOUBLE_BACKWARD = ("fastrnn: gradients of gradients (double backward) are not supported; "
                    "compute first-order gradients only")


def _no_double_backward(ctx, *grads):
    raise RuntimeError(DOUBLE_BACKWARD)


def _slices(args, in_dims, i):
    """Sample ``i`` of the arguments a ``vmap`` rule receives (unmapped ones as they are)."""
    return [a.select(d, i) if isinstance(a, torch.Tensor) and d is not None else a
            for a, d in zip(args, in_dims)]


class _RNN(torch.autograd.Function):
    """:func:`rnn_op` for eager code: the same forward and gradients, without the custom
    operator's dispatch, and with a ``vmap`` rule (``torch.func.vmap``, ``jacrev``,
    per-sample gradients): one call per sample of the mapped dimension."""

    @staticmethod
    def forward(x, hx, cx, lengths, config, *weights):
        # (autograd saves the inputs and weights, and checks their versions in backward:
        # nothing to copy or fingerprint)
        return _with_handle(*_compute(x, hx, cx, weights, lengths, config, guard=False))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, hx, cx, _, config, *weights = inputs
        ctx.save_for_backward(output[3], x, hx, cx, *weights)
        ctx.lstm = config.cell == "lstm"
        ctx.out_shape = output[0].shape
        ctx.mark_non_differentiable(output[3])

    @staticmethod
    def backward(ctx, grad_out, grad_hn, grad_cn, _grad_handle):
        handle, g_out, g_hn, g_cn, x, hx, cx, weights = _grads_in(ctx, grad_out, grad_hn,
                                                                  grad_cn)
        if torch._C._are_functorch_transforms_active():
            grads = _RNNBackward.apply(handle, g_out, g_hn, g_cn, x, hx, cx, *weights)
        elif any(map(torch._C._functorch.is_legacy_batchedtensor, (g_out, g_hn, g_cn))):
            grads = _legacy_vmap_backward(handle, g_out, g_hn, g_cn, x, hx, cx, weights)
        else:
            grads = _RNNBackwardEager.apply(handle, g_out, g_hn, g_cn, x, hx, cx, *weights)
        dx, dh, dc, *dws = grads
        need = ctx.needs_input_grad
        return (dx if need[0] else None, dh if need[1] else None,
                dc if ctx.lstm and need[2] else None, None, None, *dws)

    @staticmethod
    def vmap(info, in_dims, x, hx, cx, lengths, config, *weights):
        args = (x, hx, cx, lengths, config, *weights)
        outs = [_RNN.apply(*_slices(args, in_dims, i)) for i in range(info.batch_size)]
        out, h_n, c_n, handles = (torch.stack(parts) for parts in zip(*outs))
        keys = [int(h) for h in handles if int(h)]
        if keys:  # (the samples' handles may go before the stacked one)
            _hold(handles, keys)
        return (out, h_n, c_n, handles), (0, 0, 0, 0)


def legacy_vmap_map(fn, grads):
    """``fn`` over the samples of output gradients mapped by the older
    ``torch._vmap_internals.vmap`` (gradcheck's batched-gradient check), which knows no
    ``vmap`` rules of autograd functions: ``fn(*sample's grads)`` gives a list of tensors
    (or None) per sample; the results are stacked and mapped again at that vmap's level."""
    level = torch._C._vmapmode_increment_nesting() - 1  # (the level of the running vmap)
    torch._C._vmapmode_decrement_nesting()
    is_batched = torch._C._functorch.is_legacy_batchedtensor
    size = next(torch._remove_batch_dim(g, level, 1, 0).shape[0] for g in grads
                if g is not None and is_batched(g))
    physical = [None if g is None else torch._remove_batch_dim(g, level, size, 0)
                if is_batched(g) else g.expand(size, *g.shape) for g in grads]
    per = [fn(*(None if g is None else g[i] for g in physical)) for i in range(size)]
    return [None if parts[0] is None else torch._add_batch_dim(torch.stack(parts), 0, level)
            for parts in zip(*per)]


def _legacy_vmap_backward(handle, grad_out, grad_hn, grad_cn, x, hx, cx, weights):
    """:func:`legacy_vmap_map` of the backward of one :class:`_RNN` call."""
    return legacy_vmap_map(
        lambda *g: _RNNBackwardEager.apply(handle, *g, x, hx, cx, *weights),
        (grad_out, grad_hn, grad_cn))


class _RNNEager(_RNN):
    """:class:`_RNN` outside ``torch.func`` transforms, in the older form whose ``forward``
    sets up its own context: ``apply`` then skips binding the arguments to the signature
    (``inspect``, some 20 us a call)."""

    setup_context = torch.autograd.Function.setup_context

    @staticmethod
    def forward(ctx, *args):
        output = _RNN.forward(*args)
        _RNN.setup_context(ctx, args, output)
        return output


class _RNNBackward(torch.autograd.Function):
    """:func:`_rnn_backward` for :class:`_RNN`, with a ``vmap`` rule (``jacrev``,
    per-sample gradients); differentiating it again is an error."""

    @staticmethod
    def forward(handle, grad_out, grad_hn, grad_cn, x, hx, cx, *weights):
        return tuple(_rnn_backward(handle, grad_out, grad_hn, grad_cn, x, hx, cx, weights))

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(DOUBLE_BACKWARD)

    @staticmethod
    def vmap(info, in_dims, *args):
        outs = [_RNNBackward.apply(*_slices(args, in_dims, i))
                for i in range(info.batch_size)]
        return tuple(torch.stack(parts) for parts in zip(*outs)), (0,) * len(outs[0])


def _setup_nothing(ctx, inputs, output):
    pass


rnn_op.register_autograd(_backward, setup_context=_setup_context)
rnn_backward_op.register_autograd(_no_double_backward, setup_context=_setup_nothing)


class _RNNBackwardEager(_RNNBackward):
    """:class:`_RNNBackward` outside ``torch.func`` transforms (see :class:`_RNNEager`)."""

    setup_context = torch.autograd.Function.setup_context

    @staticmethod
    def forward(ctx, *args):
        return _RNNBackward.forward(*args)
