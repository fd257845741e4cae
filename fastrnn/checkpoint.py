"""Checkpoints: modules and optimizers to one ``.npz`` file, written atomically.

``fastrnn.save(path, {"model": model, "optim": opt, "epoch": 3})`` stores every module's
state dict under ``model/<name>``, every optimizer's under ``optim/<name>``, and plain
numbers, strings or numeric arrays as they are; anything else (a dict, None, an object
array) is refused before anything is written, since reading it back would need pickle.
The file is written beside the target under a temporary name
(``.<name>.<pid>.<random>.fastrnn-tmp``), flushed to disk and renamed over it in one step,
so a crash mid-write leaves either the old file or the new one, never a half-written file;
the temporary file of a save that was killed is removed by the next save or load of that
path (once its process is gone). ``fastrnn.load(path, same_mapping)`` validates every name
and shape before it changes anything, and returns the plain values; entries for objects not
named are left alone (load only the model of a training checkpoint).
"""

import glob
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
            value = _host(obj)
            if value.dtype.hasobject or value.dtype.kind not in "biufcUS":
                raise TypeError(
                    f"objects[{name!r}]: expected a module, an optimizer, a number, a string "
                    f"or a numeric array, got {type(obj).__name__}; load could not read it "
                    "back without pickle (store each plain value under its own name)")
            flat[name] = value
    return flat


_TMP_SUFFIX = ".fastrnn-tmp"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or no way to tell: leave its file
        return True
    return True


def _remove_stale_temporaries(path):
    """Remove the temporary files of saves to ``path`` whose process is gone."""
    folder, name = os.path.split(os.path.abspath(path))
    pattern = os.path.join(glob.escape(folder), f".{glob.escape(name)}.*{_TMP_SUFFIX}")
    for tmp in glob.glob(pattern):
        pid = os.path.basename(tmp)[len(name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def save(path, objects):
    """Write ``objects`` (name -> Module, Optimizer, number or array) to ``path`` (.npz)."""
    flat = _flatten(objects)
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(folder):
        kind = NotADirectoryError if os.path.exists(folder) else FileNotFoundError
        raise kind(f"save: cannot write {path}: {folder} is not a folder that exists")
    _remove_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=_TMP_SUFFIX,
                                   dir=folder)
    except OSError as exc:
        raise type(exc)(exc.errno, f"save: cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **flat)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno is not None:
            raise type(exc)(exc.errno, f"save: cannot write {path}: {exc.strerror}") from exc
        raise


def load(path, objects):
    """Load a checkpoint written by :func:`save` into the modules and optimizers of
    ``objects`` (the same names as at save time); returns ``{name: value}`` for the plain
    values. Missing, extra or misshapen entries raise before anything is changed."""
    path = os.fspath(path)
    _remove_stale_temporaries(path)
    with np.load(path, allow_pickle=False) as data:
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
    arrays = dict(module._named_state())
    missing = sorted(set(arrays) - set(state))
    extra = sorted(set(state) - set(arrays))
    if missing or extra:
        raise KeyError(f"load: {name!r}: missing {missing}, unexpected {extra}")
    for key, a in arrays.items():
        if state[key].shape != tuple(a.shape):
            raise ValueError(f"load: {name}/{key}: expected shape {tuple(a.shape)}, got "
                             f"{state[key].shape}")
