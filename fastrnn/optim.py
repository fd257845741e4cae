"""Optimizers and gradient clipping with PyTorch's semantics and defaults.

They update ``Parameter.data`` in place from ``Parameter.grad`` (parameters whose ``.grad``
is None are skipped, as in PyTorch) and work on NumPy and CuPy parameters alike.
"""

import math

import numpy as np

from . import dispatch
from .module import Parameter


def _params(params):
    params = list(params)
    if not params:
        raise ValueError("params: expected at least one Parameter, got an empty list")
    for k, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"params[{k}]: expected a fastrnn Parameter, got "
                            f"{type(p).__name__}")
    return params


def _nonnegative(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
    return float(value)


class Optimizer:
    """Base: the parameters, their per-parameter state and ``state_dict`` for checkpoints.

    ``state[k]`` belongs to ``params[k]`` and is created on that parameter's first step with
    a gradient, as in PyTorch; ``steps`` counts calls of :meth:`step`.
    """

    _COUNTS = ("step",)  # per-parameter entries that are counts, not arrays

    def __init__(self, params):
        self.params = _params(params)
        self.state = [dict() for _ in self.params]
        self.steps = 0

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None if set_to_none or p.grad is None else p.grad * 0

    def state_dict(self):
        """A flat mapping of names to arrays and numbers (for :func:`fastrnn.save`)."""
        out = {"steps": np.asarray(self.steps)}
        for k, st in enumerate(self.state):
            for name, value in st.items():
                out[f"{k}.{name}"] = np.asarray(value) if name in self._COUNTS else value
        return out

    def load_state_dict(self, state):
        """Restore from :meth:`state_dict`'s mapping; shapes are checked by name."""
        if "steps" not in state:
            raise KeyError("load_state_dict: missing key 'steps'")
        fresh = [dict() for _ in self.params]
        for key, value in state.items():
            if key == "steps":
                continue
            index, _, name = key.partition(".")
            if not index.isdigit() or int(index) >= len(self.params):
                raise KeyError(f"load_state_dict: unexpected key {key!r} for "
                               f"{len(self.params)} parameters")
            p = self.params[int(index)]
            if name in self._COUNTS:
                if np.shape(value) != ():
                    raise ValueError(f"load_state_dict: {key!r}: expected a number, got "
                                     f"shape {np.shape(value)}")
                fresh[int(index)][name] = int(np.asarray(value))
                continue
            if np.shape(value) != tuple(p.shape):
                raise ValueError(f"load_state_dict: {key!r}: expected shape "
                                 f"{tuple(p.shape)}, got {np.shape(value)}")
            xp = dispatch.array_module(p.data)
            fresh[int(index)][name] = xp.asarray(value, dtype=p.dtype)
        self.steps = int(np.asarray(state["steps"]))
        for st in fresh:  # (checkpoints that predate per-parameter counts: the global one)
            if "exp_avg" in st:
                st.setdefault("step", self.steps)
        self.state = fresh


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov and weight decay,
    exactly as ``torch.optim.SGD`` (the first step seeds the momentum buffer)."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False):
        super().__init__(params)
        self.lr = _nonnegative("lr", lr)
        self.momentum = _nonnegative("momentum", momentum)
        self.dampening = _nonnegative("dampening", dampening)
        self.weight_decay = _nonnegative("weight_decay", weight_decay)
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov: needs momentum > 0 and dampening = 0")
        self.nesterov = bool(nesterov)

    def step(self):
        for p, st in zip(self.params, self.state):
            if p.grad is None:
                continue
            g = p.grad
            if self.weight_decay:
                g = g + self.weight_decay * p.data
            if self.momentum:
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = g.copy()
                else:
                    buf = st["momentum_buffer"]
                    buf *= self.momentum
                    buf += (1 - self.dampening) * g
                buf = st["momentum_buffer"]
                g = g + self.momentum * buf if self.nesterov else buf
            p.data -= self.lr * g
        self.steps += 1


class Adam(Optimizer):
    """Adam (``amsgrad`` optional) with L2 weight decay, as ``torch.optim.Adam``."""

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False):
        super().__init__(params)
        self.lr = _nonnegative("lr", lr)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = _nonnegative("eps", eps)
        self.weight_decay = _nonnegative("weight_decay", weight_decay)
        self.amsgrad = bool(amsgrad)

    def step(self):
        """One update of every parameter that has a gradient; each keeps its own step count
        (a parameter without ``.grad`` is skipped and its count stays, as in PyTorch)."""
        self.steps += 1
        b1, b2 = self.betas
        for p, st in zip(self.params, self.state):
            if p.grad is None:
                continue
            st["step"] = st.get("step", 0) + 1
            bc1 = 1 - b1 ** st["step"]
            bc2 = 1 - b2 ** st["step"]
            g = p.grad
            if self.weight_decay:
                if self._decoupled:
                    p.data *= 1 - self.lr * self.weight_decay
                else:
                    g = g + self.weight_decay * p.data
            if "exp_avg" not in st:
                xp = dispatch.array_module(p.data)
                st["exp_avg"] = xp.zeros_like(p.data)
                st["exp_avg_sq"] = xp.zeros_like(p.data)
                if self.amsgrad:
                    st["max_exp_avg_sq"] = xp.zeros_like(p.data)
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m += (1 - b1) * (g - m)
            v *= b2
            v += (1 - b2) * g * g
            if self.amsgrad:
                xp = dispatch.array_module(p.data)
                xp.maximum(st["max_exp_avg_sq"], v, out=st["max_exp_avg_sq"])
                v = st["max_exp_avg_sq"]
            xp = dispatch.array_module(p.data)
            denom = xp.sqrt(v) / math.sqrt(bc2) + self.eps
            p.data -= (self.lr / bc1) * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay (default 1e-2), as ``torch.optim.AdamW``."""

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)


def clip_grad_norm_(params, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale all gradients together so that their joint norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: returns the total norm before clipping (a Python
    float); ``norm_type`` may be ``inf``; with ``error_if_nonfinite`` a NaN or infinite norm
    raises instead of spreading NaN into the weights.
    """
    params = [p for p in _params(params) if p.grad is not None]
    max_norm = _nonnegative("max_norm", max_norm)
    norm_type = float(norm_type)
    if not params:
        return 0.0
    xp = dispatch.array_module(*[p.grad for p in params])
    if norm_type == math.inf:
        total = max(float(xp.abs(p.grad).max()) for p in params)
    else:
        total = float(sum(float((xp.abs(p.grad) ** norm_type).sum()) for p in params)
                      ) ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} is "
                           f"{total}; the gradients hold NaN or infinity")
    coef = min(max_norm / (total + 1e-6), 1.0)
    for p in params:
        p.grad = p.grad * p.grad.dtype.type(coef)
    return total


def clip_grad_value_(params, clip_value):
    """Clamp every gradient element into ``[-clip_value, clip_value]`` (in place)."""
    clip_value = _nonnegative("clip_value", clip_value)
    for p in _params(params):
        if p.grad is not None:
            xp = dispatch.array_module(p.grad)
            xp.clip(p.grad, -clip_value, clip_value, out=p.grad)
