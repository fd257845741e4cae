"""Building blocks around the recurrent layers: ``Linear``, ``Embedding``, ``Dropout``,
``LastStep`` and ``Sequential``, with PyTorch's arguments, initialisation and names.

Every module mirrors its call with ``backward``: ``y = m(x)`` then ``grad_x = m.backward(g)``
accumulates the parameters' ``.grad``. Arrays may be NumPy or CuPy (the module's
parameters decide, through ``backend=``); nothing is copied between host and device.
The losses live in :mod:`fastrnn.losses` and are re-exported here.
"""

import importlib
import math

import numpy as np

from . import dispatch
from ._checks import check_array, check_lengths, float_dtype, positive_int
from ._recurrent import BackwardGuard
from .layers import GRU, LSTM, RNN
from .losses import cross_entropy, mse_loss
from .module import Module, backend_after_move

__all__ = ["Linear", "Embedding", "Dropout", "LastStep", "Sequential", "mse_loss",
           "cross_entropy"]


class _Layer(Module):
    """A module with one saved context per forward, guarded like the recurrent layers."""

    def __init__(self, dtype, backend, seed):
        super().__init__()
        self.dtype = float_dtype(dtype)
        self.backend = backend
        self._xp = dispatch.array_module_for(backend)
        self._rng = np.random.default_rng(seed)
        self._guard = BackwardGuard()

    def _picklable(self):
        return {"_guard": BackwardGuard(), "_xp": self._xp.__name__}

    def __setstate__(self, state):
        self.__dict__.update(state, _xp=importlib.import_module(state["_xp"]))

    def _after_to(self, device, xp, dtype):
        if xp is not None:
            self._xp = xp
            self.backend = backend_after_move(self.backend, device)
        if dtype is not None:
            self.dtype = dtype
        self._guard = BackwardGuard()

    def _new(self, values):
        return self._xp.asarray(values.astype(self.dtype))

    def _check_module(self, name, a):
        got = dispatch.array_module(a, names=[name])
        if got is not self._xp:
            raise TypeError(f"{name}: this module's parameters are {self._xp.__name__} "
                            f"arrays, got a {got.__name__} array")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self):
        return ""


class Linear(_Layer):
    """``y = x @ weight.T + bias`` over the last dimension, as ``torch.nn.Linear``.

    ``weight [out,in]`` and ``bias [out]`` start from PyTorch's ``U(-1/sqrt(in), 1/sqrt(in))``.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, backend=None,
                 seed=None):
        super().__init__(dtype, backend, seed)
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        bound = 1.0 / math.sqrt(self.in_features)
        self.register_parameter("weight", self._new(
            self._rng.uniform(-bound, bound, (self.out_features, self.in_features))))
        if bias:
            self.register_parameter("bias", self._new(
                self._rng.uniform(-bound, bound, self.out_features)))

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={'bias' in self._parameters}"

    def forward(self, x):
        self._check_module("x", x)
        check_array("x", x, tuple(range(1, 8)), self.dtype)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected {self.in_features} features (in_features) in the "
                             f"last dimension, got shape {tuple(x.shape)}")
        y = x @ self._parameters["weight"].data.T
        if "bias" in self._parameters:
            y = y + self._parameters["bias"].data
        self._guard.record(x, True)  # cheap to keep, so backward works in eval mode too
        return y

    def backward(self, grad):
        x = self._guard.peek("Linear")
        check_array("grad", grad, x.ndim, self.dtype, x.shape[:-1] + (self.out_features,))
        self._guard.consume()
        g2 = grad.reshape(-1, self.out_features)
        self._parameters["weight"].accumulate(g2.T @ x.reshape(-1, self.in_features))
        if "bias" in self._parameters:
            self._parameters["bias"].accumulate(g2.sum(axis=0))
        return grad @ self._parameters["weight"].data


def _scatter_add(xp, target, index, values):
    if hasattr(xp, "add") and hasattr(xp.add, "at"):
        xp.add.at(target, index, values)
    else:  # older CuPy
        import cupyx
        cupyx.scatter_add(target, index, values)


class Embedding(_Layer):
    """Rows of ``weight [num_embeddings, embedding_dim]`` picked by integer indices, as
    ``torch.nn.Embedding`` (initialised from ``N(0, 1)``)."""

    def __init__(self, num_embeddings, embedding_dim, dtype=np.float32, backend=None,
                 seed=None):
        super().__init__(dtype, backend, seed)
        self.num_embeddings = positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = positive_int("embedding_dim", embedding_dim)
        self.register_parameter("weight", self._new(
            self._rng.standard_normal((self.num_embeddings, self.embedding_dim))))

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"

    def forward(self, indices):
        self._check_module("indices", indices)
        if not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"indices: expected an integer array, got dtype {indices.dtype}")
        if indices.size and (int(indices.min()) < 0 or
                             int(indices.max()) >= self.num_embeddings):
            raise ValueError(f"indices: expected values in [0, {self.num_embeddings}), got "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        self._guard.record(indices, True)
        return self._parameters["weight"].data[indices]

    def backward(self, grad):
        """Accumulates ``weight.grad``; returns None (indices have no gradient)."""
        idx = self._guard.peek("Embedding")
        check_array("grad", grad, idx.ndim + 1, self.dtype, idx.shape + (self.embedding_dim,))
        self._guard.consume()
        w = self._parameters["weight"]
        g = self._xp.zeros_like(w.data)
        _scatter_add(self._xp, g, idx.reshape(-1), grad.reshape(-1, self.embedding_dim))
        w.accumulate(g)
        return None


class Dropout(_Layer):
    """Zero each element with probability ``p`` in training mode, scaling the rest by
    ``1/(1-p)``; the identity in eval mode (``torch.nn.Dropout``)."""

    def __init__(self, p=0.5, seed=None, backend=None):
        super().__init__(np.float32, backend, seed)
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self._xp_rng = None

    def extra_repr(self):
        return f"p={self.p}"

    def _after_to(self, device, xp, dtype):
        super()._after_to(device, xp, dtype)
        if xp is not None:
            self._xp_rng = None  # (a generator of the old array module)

    def forward(self, x):
        self._check_module("x", x)
        check_array("x", x, tuple(range(1, 8)))
        if not self.training or self.p == 0:
            self._guard.record(None, True)
            return x
        if self._xp is np:
            u = self._rng.random(x.shape)
        else:
            if self._xp_rng is None:
                self._xp_rng = self._xp.random.default_rng(int(self._rng.integers(2**31)))
            u = self._xp_rng.random(x.shape)
        if self.p == 1:  # every element dropped (zeros, not 0 / 0)
            mask = self._xp.zeros(x.shape, x.dtype)
        else:
            mask = (u >= self.p).astype(x.dtype) / x.dtype.type(1 - self.p)
        self._guard.record(mask, True)
        return x * mask

    def backward(self, grad):
        mask = self._guard.peek("Dropout")
        self._guard.consume()
        return grad if mask is None else grad * mask


class LastStep(_Layer):
    """Many-to-one: from a sequence ``[T,B,F]`` (``[B,T,F]`` if ``batch_first``) keep each
    sequence's last valid step, ``[B,F]``.

    With ``directions=2`` (after a bidirectional layer, ``F = 2*H``) the forward half comes
    from the last valid step and the reverse half from step 0, where the reverse direction
    ends: the final states of both directions.

    ``batch_first`` and ``directions`` follow the recurrent layer before the ``LastStep`` in
    a :class:`Sequential` (through any ``Dropout`` between them) unless stated; a stated
    value that contradicts that layer is an error. A ``LastStep`` that follows no recurrent
    layer needs both stated: the layout of ``[T,B,F]`` and the split of ``F`` cannot be
    read from the array.
    """

    def __init__(self, batch_first=None, directions=None):
        super().__init__(np.float32, None, None)
        if batch_first is not None and not isinstance(batch_first, (bool, np.bool_)):
            raise TypeError(f"batch_first: expected True, False or None, got {batch_first!r}")
        if directions not in (None, 1, 2) or isinstance(directions, bool):
            raise ValueError(f"directions: expected 1, 2 or None, got {directions!r}")
        self.batch_first = None if batch_first is None else bool(batch_first)
        self.directions = directions
        self._stated = (self.batch_first, directions)

    def _follow(self, layer, where):
        """Take the layout and directions of ``layer``, the recurrent layer this one reads
        the output of; ``where`` names the two in errors."""
        got = (bool(layer.batch_first), layer.num_directions)
        for name, stated, value in zip(("batch_first", "directions"), self._stated, got):
            if stated is not None and stated != value:
                raise ValueError(f"{where}: LastStep({name}={stated!r}) follows a "
                                 f"{type(layer).__name__} whose output has {name}={value!r}")
        self.batch_first, self.directions = got

    def extra_repr(self):
        return f"batch_first={self.batch_first}, directions={self.directions}"

    def forward(self, x, lengths=None):
        xp = dispatch.array_module(x, names=["x"])
        check_array("x", x, 3)
        unknown = [n for n, v in (("batch_first", self.batch_first),
                                  ("directions", self.directions)) if v is None]
        if unknown:
            raise ValueError(f"LastStep: {' and '.join(unknown)} unknown; state "
                             f"{'them' if len(unknown) > 1 else 'it'} (LastStep(batch_first="
                             "..., directions=...)) or place the LastStep after a recurrent "
                             "layer in a Sequential")
        seq = x.transpose(1, 0, 2) if self.batch_first else x
        T, B, F = seq.shape
        if F % self.directions:
            raise ValueError(f"x: {F} features do not split into {self.directions} "
                             "directions")
        if lengths is None:
            last = np.full(B, T - 1)
        else:
            last = check_lengths(lengths, B, T) - 1
            if (last < 0).any():
                raise ValueError("lengths: LastStep needs every sequence to have a step")
        rows = xp.arange(B)
        half = F // self.directions
        out = seq[xp.asarray(last), rows]
        if self.directions == 2:
            out = xp.concatenate([out[:, :half], seq[0, :, half:]], axis=1)
        self._guard.record((last, seq.shape), True)
        return out

    def backward(self, grad):
        last, shape = self._guard.peek("LastStep")
        T, B, F = shape
        check_array("grad", grad, 2, None, (B, F))
        self._guard.consume()
        xp = dispatch.array_module(grad, names=["grad"])
        g = xp.zeros(shape, grad.dtype)
        rows = xp.arange(B)
        half = F // self.directions
        if self.directions == 1:
            g[xp.asarray(last), rows] = grad
        else:
            g[xp.asarray(last), rows, :half] = grad[:, :half]
            g[0, :, half:] = grad[:, half:]
        return g.transpose(1, 0, 2) if self.batch_first else g


class Sequential(Module):
    """Modules applied in order; ``backward`` runs them in reverse.

    Recurrent layers pass on their output sequence (their final state is dropped; use the
    layer directly for it) and receive ``lengths``, as does :class:`LastStep`, so
    ``Sequential(LSTM(...), Linear(...))`` is many-to-many and
    ``Sequential(LSTM(...), LastStep(), Linear(...))`` many-to-one. Parameter names are
    prefixed with the module's position, as in PyTorch (``0.weight_ih_l0``).
    """

    def __init__(self, *modules):
        super().__init__()
        for k, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"modules[{k}]: expected a fastrnn module, got "
                                f"{type(m).__name__}")
            self.add_module(str(k), m)
        self._bind_last_steps()

    def _bind_last_steps(self):
        """Each :class:`LastStep` takes the layout and directions of the recurrent layer it
        reads (the nearest one before it, through ``Dropout``)."""
        source = None  # (position, layer)
        for k, m in enumerate(self):
            if isinstance(m, (RNN, GRU, LSTM)):
                source = (k, m)
            elif isinstance(m, LastStep):
                if source is not None:
                    m._follow(source[1], f"modules[{k}] after modules[{source[0]}]")
                source = None
            elif not isinstance(m, Dropout):
                source = None

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, k):
        return list(self._modules.values())[k]

    def __call__(self, x, lengths=None):
        return self.forward(x, lengths)

    def forward(self, x, lengths=None):
        for m in self:
            if isinstance(m, (RNN, GRU, LSTM)):
                x = m(x, lengths=lengths)[0]
            elif isinstance(m, LastStep):
                x = m(x, lengths)
            else:
                x = m(x)
        return x

    def backward(self, grad):
        """Backpropagate ``grad`` through every module; returns the input's gradient (None
        when the first module takes indices)."""
        for m in reversed(list(self)):
            grad = m.backward(grad)
            if isinstance(m, (RNN, GRU, LSTM)):
                grad = grad[0]
        return grad

    def __repr__(self):
        inner = "\n".join(f"  ({k}): {m!r}" for k, m in self._modules.items())
        return f"Sequential(\n{inner}\n)"
