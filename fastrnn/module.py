"""``Parameter`` and ``Module``: parameters, names, modes and state dicts, as in PyTorch."""

import importlib
from collections import OrderedDict

import numpy as np

from . import dispatch


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
        self._modules = OrderedDict()
        self.training = True

    def __getattr__(self, name):
        """Parameters and child modules by name (``lstm.weight_hh_l0``), as in PyTorch."""
        d = self.__dict__
        for store in ("_parameters", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_parameter(self, name, data):
        p = Parameter(data)
        self._parameters[name] = p
        return p

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

    def to(self, device):
        """Move parameters and gradients to ``"gpu"`` (CuPy) or ``"cpu"`` (NumPy), in place.

        Explicit copies, the only ones fastrnn makes between host and device. A layer whose
        ``backend`` names a backend of the other array module follows the move (``"gpu"``
        after ``to("gpu")``; automatic selection after ``to("cpu")``). What a forward saved
        for backward is dropped: run forward again after a move.
        """
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device: expected 'cpu' or 'gpu', got {device!r}")
        xp = dispatch.array_module_for("gpu" if device == "gpu" else "numpy")

        def move(a):
            if a is None:
                return None
            if device == "gpu":
                return xp.asarray(a)
            return a.get() if dispatch.is_cupy_array(a) else a

        for p in self.parameters():
            p.data, p.grad = move(p.data), move(p.grad)
        for m in self.modules():
            backend = getattr(m, "backend", None)
            if device == "gpu" and backend in ("numpy", "cpu"):
                m.backend = "gpu"
            elif device == "cpu" and backend == "gpu":
                m.backend = None
            if hasattr(m, "_xp"):
                m._xp = xp
            if hasattr(m, "_guard"):
                m._guard.__init__()
            if hasattr(m, "_stack"):
                m._stack.clear()
        return self

    def __getstate__(self):
        """For ``pickle`` and ``copy.deepcopy``: parameters, gradients, settings and random
        state. Not what the last forward saved for backward (it may hold what cannot be
        pickled; a copy runs forward again before its backward, as after :meth:`to`), and
        the array module by name."""
        state = self.__dict__.copy()
        if "_xp" in state:
            state["_xp"] = state["_xp"].__name__
        if "_guard" in state:
            state["_guard"] = type(state["_guard"])()
        if "_stack" in state:
            state["_stack"] = []
        return state

    def __setstate__(self, state):
        if isinstance(state.get("_xp"), str):
            state["_xp"] = importlib.import_module(state["_xp"])
        self.__dict__.update(state)

    def state_dict(self):
        """An ordered mapping of parameter names to copies of their arrays."""
        return OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state):
        """Load parameters from any mapping of names to array-likes.

        A PyTorch ``state_dict`` loads with
        ``layer.load_state_dict({k: v.numpy() for k, v in sd.items()})``. Missing, extra and
        misshapen entries are rejected by name before anything is changed. Real floating
        values are converted to the layer's dtype, as PyTorch's ``load_state_dict`` does;
        integer, complex and non-numeric values are rejected.
        """
        params = OrderedDict(self.named_parameters())
        missing = [k for k in params if k not in state]
        extra = [k for k in state if k not in params]
        if missing or extra:
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {extra}")
        staged = {}
        for name, p in params.items():
            value = state[name]
            if dispatch.is_cupy_array(value):
                value = value.get()
            value = np.asarray(value)
            if not np.issubdtype(value.dtype, np.floating):
                raise TypeError(f"load_state_dict: {name!r}: expected real floating values, "
                                f"got dtype {value.dtype}")
            if value.shape != tuple(p.shape):
                raise ValueError(f"load_state_dict: {name!r}: expected shape "
                                 f"{tuple(p.shape)}, got {value.shape}")
            staged[name] = value.astype(p.dtype)
        for name, p in params.items():
            xp = dispatch.array_module(p.data)
            p.data = xp.asarray(staged[name])
