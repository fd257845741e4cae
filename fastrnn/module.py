"""``Parameter`` and ``Module``: parameters, names, modes and state dicts, as in PyTorch."""

from collections import OrderedDict, namedtuple

import numpy as np

from . import dispatch
from ._checks import float_dtype


def backend_after_move(backend, device):
    """A module's ``backend=`` setting after :meth:`Module.to` moved it to ``device``: one
    of the other array module's becomes ``"gpu"`` (to the GPU) or automatic selection
    (back to the CPU)."""
    if device == "gpu" and backend in ("numpy", "cpu"):
        return "gpu"
    if device == "cpu" and backend == "gpu":
        return None
    return backend


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = "What :meth:`Module.load_state_dict` did not match, as in PyTorch."


class Parameter:
    """A trainable array: ``.data`` holds the values, ``.grad`` the accumulated gradient.

    ``.grad`` is None until a backward pass writes it and after ``zero_grad()``, as in
    PyTorch.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    def accumulate(self, g):
        """Add ``g`` to ``.grad`` (or set it when there is none)."""
        self.grad = g if self.grad is None else self.grad + g

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base of every layer: parameters in registration order, children, train/eval."""

    def __init__(self):
        self._parameters = OrderedDict()
        self._buffers = OrderedDict()
        self._modules = OrderedDict()
        self.training = True

    def __getattr__(self, name):
        """Parameters, buffers and child modules by name (``lstm.weight_hh_l0``), as in
        PyTorch."""
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_parameter(self, name, data):
        p = Parameter(data)
        self._parameters[name] = p
        return p

    def register_buffer(self, name, data):
        """An array that is part of the module's state (``state_dict``, save and load) but
        not trained, as in PyTorch: a quantized layer's low-precision weights. It keeps its
        dtype: ``to(dtype)`` does not convert it, ``load_state_dict`` takes exactly it."""
        self._buffers[name] = data
        return data

    def named_buffers(self, prefix=""):
        """Yield ``(name, array)`` pairs of every buffer, this module's and its children's."""
        for name, b in self.__dict__.get("_buffers", {}).items():
            yield prefix + name, b
        for child_name, child in self._modules.items():
            yield from child.named_buffers(f"{prefix}{child_name}.")

    def _named_state(self, prefix=""):
        """``(name, array)`` of everything :meth:`state_dict` holds (without copies): each
        module's parameters, then its buffers, then its children's."""
        for name, p in self._parameters.items():
            yield prefix + name, p.data
        for name, b in self.__dict__.get("_buffers", {}).items():
            yield prefix + name, b
        for child_name, child in self._modules.items():
            yield from child._named_state(f"{prefix}{child_name}.")

    def add_module(self, name, module):
        self._modules[name] = module
        return module

    def named_parameters(self, prefix=""):
        """Yield ``(name, Parameter)`` pairs with PyTorch's names."""
        for name, p in self._parameters.items():
            yield prefix + name, p
        for child_name, child in self._modules.items():
            yield from child.named_parameters(f"{prefix}{child_name}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def zero_grad(self, set_to_none=True):
        """Forget accumulated gradients (``.grad = None``, or zeros if not ``set_to_none``)."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = p.grad * 0

    def train(self, mode=True):
        self.training = bool(mode)
        for child in self._modules.values():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def modules(self):
        """This module and every module inside it."""
        yield self
        for child in self._modules.values():
            yield from child.modules()

    def to(self, *args, device=None, dtype=None):
        """Move parameters and gradients to ``"gpu"`` (CuPy) or ``"cpu"`` (NumPy) and/or
        convert them to float32 or float64, in place, as ``torch.nn.Module.to``:
        ``m.to("gpu")``, ``m.to(np.float64)``, ``m.to("cpu", np.float32)``. Returns the module.

        Explicit copies, the only ones fastrnn makes between host and device. A layer whose
        ``backend`` names a backend of the other array module follows the move (``"gpu"``
        after ``to("gpu")``; automatic selection after ``to("cpu")``). What a forward saved
        for backward is dropped: run forward again after a move. An optimizer made before a
        change of dtype keeps state of the old dtype: make it after ``to``, as in PyTorch.
        """
        for a in args:
            if isinstance(a, str) and device is None and a in ("cpu", "gpu"):
                device = a
            elif dtype is None and not isinstance(a, str):
                dtype = a
            else:
                raise ValueError(f"to(): expected a device ('cpu' or 'gpu') and/or a dtype "
                                 f"(float32 or float64), got {a!r}")
        if device is not None and device not in ("cpu", "gpu"):
            raise ValueError(f"device: expected 'cpu' or 'gpu', got {device!r}")
        if dtype is not None:
            dtype = float_dtype(dtype)
        for m in self.modules():
            m._check_to(device, dtype)
        xp = None if device is None else dispatch.array_module_for(
            "gpu" if device == "gpu" else "numpy")

        def move(a):
            if a is None:
                return None
            if device == "gpu":
                a = xp.asarray(a)
            elif device == "cpu" and dispatch.is_cupy_array(a):
                a = a.get()
            return a if dtype is None or a.dtype == dtype else a.astype(dtype)

        for p in self.parameters():
            p.data, p.grad = move(p.data), move(p.grad)
        for m in self.modules():
            buffers = m.__dict__.get("_buffers", {})
            for name, b in buffers.items():  # (moved, never converted)
                buffers[name] = b if device is None else xp.asarray(b) if device == "gpu" \
                    else b.get() if dispatch.is_cupy_array(b) else b
            m._after_to(device, xp, dtype)
        return self

    def double(self):
        """Convert parameters and gradients to float64 (``to(np.float64)``)."""
        return self.to(dtype=np.float64)

    def float(self):
        """Convert parameters and gradients to float32 (``to(np.float32)``)."""
        return self.to(dtype=np.float32)

    def _check_to(self, device, dtype):
        """Refuse a :meth:`to` this module cannot follow (before anything moves); ``device``
        and ``dtype`` may be None. Default: any."""

    def _after_to(self, device, xp, dtype):
        """Bring this module's own settings in line after :meth:`to` moved (``device``,
        ``xp``) or converted (``dtype``) its parameters; either may be None. Modules that
        keep a backend, an array module, a dtype or what forward saved override this."""

    def __getstate__(self):
        """For ``pickle`` and ``copy.deepcopy``: parameters, gradients, settings and random
        state; not what the last forward saved for backward (it may hold what cannot be
        pickled; a copy runs forward again before its backward, as after :meth:`to`)."""
        state = self.__dict__.copy()
        state.update(self._picklable())
        return state

    def _picklable(self):
        """Replacements for this module's attributes that a copy must not carry over, such
        as what forward saved (default: none); a module's ``__setstate__`` restores any
        it needs to."""
        return {}

    def state_dict(self):
        """An ordered mapping of parameter and buffer names to copies of their arrays."""
        return OrderedDict((name, a.copy()) for name, a in self._named_state())

    def load_state_dict(self, state, strict=True):
        """Load parameters from any mapping of names to array-likes.

        A PyTorch ``state_dict`` loads with
        ``layer.load_state_dict({k: v.numpy() for k, v in sd.items()})``. With ``strict``
        (the default) missing and unexpected entries are rejected by name; with
        ``strict=False`` the entries present are loaded and the rest reported. Misshapen
        entries are always rejected, before anything is changed. Real floating values are
        converted to the layer's dtype, as PyTorch's ``load_state_dict`` does; integer,
        complex and non-numeric values are rejected. Returns ``IncompatibleKeys(
        missing_keys, unexpected_keys)``, as PyTorch does.
        """
        params = OrderedDict(self.named_parameters())
        buffers = OrderedDict(self.named_buffers())
        names = list(params) + list(buffers)
        missing = [k for k in names if k not in state]
        extra = [k for k in state if k not in params and k not in buffers]
        if strict and (missing or extra):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {extra}")
        staged = {}
        for name in names:
            if name not in state:
                continue
            value = state[name]
            if dispatch.is_cupy_array(value):
                value = value.get()
            value = np.asarray(value)
            old = params[name].data if name in params else buffers[name]
            if name in buffers and value.dtype != old.dtype:
                raise TypeError(f"load_state_dict: {name!r}: expected dtype {old.dtype} (a "
                                f"buffer keeps its dtype), got {value.dtype}")
            if not np.issubdtype(value.dtype, np.floating) and name in params:
                raise TypeError(f"load_state_dict: {name!r}: expected real floating values, "
                                f"got dtype {value.dtype}")
            if value.shape != tuple(old.shape):
                raise ValueError(f"load_state_dict: {name!r}: expected shape "
                                 f"{tuple(old.shape)}, got {value.shape}")
            staged[name] = value.astype(old.dtype)
        for name, value in staged.items():
            if name in params:
                p = params[name]
                p.data = dispatch.array_module(p.data).asarray(value)
            else:
                module, key = self._owner(name)
                module._buffers[key] = dispatch.array_module(buffers[name]).asarray(value)
        return IncompatibleKeys(missing, extra)

    def _owner(self, name):
        """``(module, key)`` of a dotted state name (``"0.weight_hh_l0"``)."""
        module = self
        *path, key = name.split(".")
        for part in path:
            module = module._modules[part]
        return module, key
