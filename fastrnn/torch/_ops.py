"""fastrnn's recurrent networks as PyTorch custom operators with autograd.

``fastrnn::rnn`` runs :func:`fastrnn.functional.rnn` on the tensors' memory (CPU tensors as
NumPy views, CUDA tensors as CuPy arrays through DLPack: no copies) and returns the output,
the final states and a handle to what backward needs; ``fastrnn::rnn_backward`` takes the
handle and the output gradients and returns every input gradient. Both have fake (meta)
implementations, so ``torch.compile(model, fullgraph=True)`` traces through them, and the
pair is registered as the first operator's autograd formula.

Shapes (DESIGN.md legend): ``x [T,B,I]`` (time-major), ``hx, cx [L*D,B,H]``, ``weights``
the layer's flat list (``w_ih, w_hh[, b_ih, b_hh][, w_hr]`` per layer and direction),
``lengths [B]`` int64 on the CPU or empty (all ``T``); with ``proj_size = P > 0`` (an LSTM's
projection) ``hx [L*D,B,P]`` and outputs ``D*P`` wide.
"""

import itertools
import weakref

import numpy as np
import torch

from .. import functional
from ..kernels.cells import get_cell

_contexts = {}  # handle -> what rnn_backward needs, dropped with the handle's tensor
_handles = itertools.count(1)


class _TorchUniform:
    """Dropout masks from torch's generator, so that ``torch.manual_seed`` repeats a run."""

    def __init__(self, device):
        self.device = device

    def random(self, shape):
        u = torch.rand(shape, dtype=torch.float64, device=self.device)
        return _array(u)


def _array(t):
    """The tensor's memory as a NumPy (CPU) or CuPy (CUDA) array, without a copy."""
    t = t.detach()
    if t.device.type == "cpu":
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


def _stream(device):
    """Run CuPy work on torch's current stream of ``device`` (nothing to do on the CPU)."""
    if device.type != "cuda":
        return _NoStream()
    import cupy
    return cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)


class _NoStream:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _groups(weights, has_bias, proj_size):
    """:func:`fastrnn.functional.rnn`'s weight tuples from the module's flat list."""
    arrays = [_array(w) for w in weights]
    per = 2 + 2 * has_bias + (proj_size > 0)
    groups = []
    for k in range(0, len(arrays), per):
        g = arrays[k:k + per]
        if not has_bias:
            g[2:2] = [None, None]
        groups.append(tuple(g))
    return groups


def _release(handle):
    _contexts.pop(handle, None)


def _compute(x, hx, cx, weights, lengths, cell, num_layers, bidirectional, has_bias,
             dropout, training, save, backend, proj_size):
    """:func:`fastrnn.functional.rnn` on the tensors' memory: output, h_n, c_n (empty but
    for the LSTM), and what backward needs (None unless ``save``)."""
    with _stream(x.device):
        out, h_n, c_n, ctx = functional.rnn(
            cell, _array(x), _groups(weights, has_bias, proj_size), _array(hx),
            _array(cx) if cell == "lstm" else None, num_layers=num_layers,
            bidirectional=bidirectional,
            lengths=lengths.numpy() if lengths.numel() else None, dropout=dropout,
            training=training, rng=_TorchUniform(x.device), save=save,
            backend=backend or None, proj_size=proj_size)
    return _tensor(out, x), _tensor(h_n, x), _tensor(c_n, x), ctx


def _rnn(x: torch.Tensor, hx: torch.Tensor, cx: torch.Tensor, weights: list[torch.Tensor],
         lengths: torch.Tensor, cell: str, num_layers: int, bidirectional: bool,
         has_bias: bool, dropout: float, training: bool, save: bool, backend: str,
         proj_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output ``[T,B,D*H]``, ``h_n``, ``c_n`` (empty but for the LSTM) and a handle
    (int64 scalar; 0 when nothing was saved)."""
    out, h_n, c_n, ctx = _compute(x, hx, cx, weights, lengths, cell, num_layers,
                                  bidirectional, has_bias, dropout, training, save, backend,
                                  proj_size)
    handle = torch.zeros((), dtype=torch.int64)
    if ctx is not None:
        key = next(_handles)
        _contexts[key] = ctx
        handle.fill_(key)
        weakref.finalize(handle, _release, key)
    return out, h_n, c_n, handle


rnn_op = torch.library.custom_op("fastrnn::rnn", mutates_args=())(_rnn)


def rnn(*args):
    """:func:`rnn_op`; a call that saves nothing for backward (``save`` False) outside
    ``torch.compile`` skips the operator's dispatch (~0.1-0.2 ms a call) and runs it
    directly."""
    if args[11] or torch.compiler.is_compiling():
        return rnn_op(*args)
    return _compute(*args)


@rnn_op.register_fake
def _rnn_fake(x, hx, cx, weights, lengths, cell, num_layers, bidirectional, has_bias,
              dropout, training, save, backend, proj_size):
    T, B, _ = x.shape
    D = 2 if bidirectional else 1
    S = weights[1].shape[1]  # the state's size: H, or proj_size
    H = weights[1].shape[0] // get_cell(cell).gates
    c_n = x.new_empty((num_layers * D, B, H)) if cell == "lstm" else x.new_empty(0)
    return (x.new_empty((T, B, D * S)), x.new_empty((num_layers * D, B, S)), c_n,
            x.new_empty((), dtype=torch.int64))


@torch.library.custom_op("fastrnn::rnn_backward", mutates_args=())
def rnn_backward_op(handle: torch.Tensor, grad_out: torch.Tensor, grad_hn: torch.Tensor,
                    grad_cn: torch.Tensor, x: torch.Tensor, hx: torch.Tensor,
                    cx: torch.Tensor, weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """``[grad_x, grad_hx, grad_cx, *grad_weights]`` for the forward behind ``handle``
    (``x``, ``hx``, ``cx`` and ``weights`` give the shapes and the device)."""
    ctx = _contexts.get(int(handle))
    if ctx is None:
        raise RuntimeError("fastrnn: nothing was saved for this backward (the forward ran "
                           "without gradients, or its graph was already freed)")
    with _stream(x.device):
        g_out = _array(grad_out.contiguous())
        dx, dh0, dc0, dws = functional.rnn_backward(
            ctx, g_out, _array(grad_hn.contiguous()),
            _array(grad_cn.contiguous()) if grad_cn.numel() else None)
    grads = [_tensor(dx, x), _tensor(dh0, x), _tensor(dc0, x)]
    for group in dws:
        grads += [_tensor(g, x) for g in group if g is not None]
    return grads


@rnn_backward_op.register_fake
def _rnn_backward_fake(handle, grad_out, grad_hn, grad_cn, x, hx, cx, weights):
    # contiguous, as the real kernel returns them (``empty_like`` would copy the strides of
    # a transposed or permuted input)
    return [t.new_empty(t.shape) for t in (x, hx, cx, *weights)]


def _setup_context(ctx, inputs, output):
    x, hx, cx, weights = inputs[:4]
    ctx.save_for_backward(output[3], x, hx, cx, *weights)
    ctx.lstm = inputs[5] == "lstm"
    ctx.out_shape = output[0].shape


def _backward(ctx, grad_out, grad_hn, grad_cn, _grad_handle):
    handle, x, hx, cx, *weights = ctx.saved_tensors
    grad_out = grad_out if grad_out is not None else x.new_zeros(ctx.out_shape)
    grad_hn = grad_hn if grad_hn is not None else torch.zeros_like(hx)
    if not ctx.lstm:
        grad_cn = cx.new_empty(0)
    elif grad_cn is None:
        grad_cn = torch.zeros_like(cx)
    dx, dh, dc, *dws = rnn_backward_op(handle, grad_out, grad_hn, grad_cn, x, hx, cx, weights)
    need = ctx.needs_input_grad
    return (dx if need[0] else None, dh if need[1] else None,
            dc if ctx.lstm and need[2] else None, dws) + (None,) * 10


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fastrnn: gradients of gradients (double backward) are not "
                       "supported; compute first-order gradients only")


def _setup_nothing(ctx, inputs, output):
    pass


rnn_op.register_autograd(_backward, setup_context=_setup_context)
rnn_backward_op.register_autograd(_no_double_backward, setup_context=_setup_nothing)
