"""Checkpoints: modules and optimizers to one ``.npz`` file, written atomically.

``fastrnn.save(path, {"model": model, "optim": opt, "epoch": 3})`` stores every module's
state dict under ``model/<name>``, every optimizer's under ``optim/<name>``, and plain
numbers or arrays as they are. The file is written beside the target under a temporary
name, flushed to disk and renamed over it in one step, so a crash mid-write leaves either
the old file or the new one, never a half-written file. ``fastrnn.load(path, same_mapping)``
validates every name and shape before it changes anything, and returns the plain values;
entries for objects not named are left alone (load only the model of a training checkpoint).
"""

import os
import tempfile

import numpy as np

from . import dispatch
from .module import Module
from .optim import Optimizer


def _host(a):
    return a.get() if dispatch.is_cupy_array(a) else np.asarray(a)


def _flatten(objects):
    if not isinstance(objects, dict):
        raise TypeError(f"objects: expected a dict of name -> module, optimizer or value, got "
                        f"{type(objects).__name__}")
    flat = {}
    for name, obj in objects.items():
        if "/" in name:
            raise ValueError(f"objects: names may not contain '/', got {name!r}")
        if isinstance(obj, (Module, Optimizer)):
            for key, value in obj.state_dict().items():
                flat[f"{name}/{key}"] = _host(value)
        else:
            flat[name] = _host(obj)
    return flat


def save(path, objects):
    """Write ``objects`` (name -> Module, Optimizer, number or array) to ``path`` (.npz)."""
    flat = _flatten(objects)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastrnn-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **flat)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load(path, objects):
    """Load a checkpoint written by :func:`save` into the modules and optimizers of
    ``objects`` (the same names as at save time); returns ``{name: value}`` for the plain
    values. Missing, extra or misshapen entries raise before anything is changed."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        stored = {k: data[k] for k in data.files}
    groups, plain = {}, {}
    for key, value in stored.items():
        head, sep, rest = key.partition("/")
        if sep:
            groups.setdefault(head, {})[rest] = value
        else:
            plain[key] = value
    for name, obj in objects.items():
        if isinstance(obj, (Module, Optimizer)) and name not in groups:
            raise KeyError(f"load: the checkpoint has no entries for {name!r}; it holds "
                           f"{sorted(set(groups) | set(plain))}")
    # Modules are checked up front; each optimizer checks everything before it changes
    # anything, so loading optimizers first and modules last changes nothing on an error.
    for name, obj in objects.items():
        if isinstance(obj, Module):
            _check_module(name, obj, groups[name])
    for kind in (Optimizer, Module):
        for name, obj in objects.items():
            if isinstance(obj, kind):
                obj.load_state_dict(groups[name])
    return {k: (v.item() if v.ndim == 0 else v) for k, v in plain.items()}


def _check_module(name, module, state):
    params = dict(module.named_parameters())
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        raise KeyError(f"load: {name!r}: missing {missing}, unexpected {extra}")
    for key, p in params.items():
        if state[key].shape != tuple(p.shape):
            raise ValueError(f"load: {name}/{key}: expected shape {tuple(p.shape)}, got "
                             f"{state[key].shape}")
