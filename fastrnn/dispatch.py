"""Backend registry and selection.

A backend is a module implementing the kernel contract of docs/architecture.md (``forward`` and
``backward`` for one layer and one direction) on one array module. Choice, strongest first:
the ``backend=`` argument of a call or layer; :func:`set_backend`; the environment variable
``FASTRNN_BACKEND``; otherwise ``auto`` (``gpu`` for CuPy arrays, ``cpu`` for NumPy arrays).
Asking for a backend that is unknown or unavailable is an error, never a silent fallback.
"""

import importlib
import os
import warnings

import numpy as np

ENV_VAR = "FASTRNN_BACKEND"


class BackendUnavailableError(RuntimeError):
    """A known backend that cannot run here; the message says why and how to fix it."""


def _load_numpy():
    from .kernels import reference
    return reference


def _load_cpu():
    try:
        importlib.import_module("numba")
    except ImportError as exc:  # numba is a dependency; a broken install lands here
        raise BackendUnavailableError(
            f"numba cannot be imported ({exc}); install it with `pip install numba`") from exc
    try:
        return importlib.import_module(".kernels.cpu", __package__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.kernels.cpu":
            raise
        raise BackendUnavailableError(
            "this installation lacks the Numba CPU kernels (fastrnn.kernels.cpu); "
            "reinstall fastrnn") from None


def _load_gpu():
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        raise BackendUnavailableError(
            "CuPy is not installed; install it with `pip install fastrnn[gpu]` "
            "(or the cupy-cudaXXx wheel matching your CUDA)") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA raises its own error types when no driver is present
        raise BackendUnavailableError(f"CuPy cannot reach a CUDA device: {exc}") from None
    if count == 0:
        raise BackendUnavailableError("CuPy is installed but no CUDA device is visible")
    try:
        return importlib.import_module(".kernels.cuda.device", __package__)
    except ModuleNotFoundError as exc:
        ours = {f"{__package__}.kernels{sub}" for sub in ("", ".cuda", ".cuda.device")}
        if exc.name not in ours:
            raise
        raise BackendUnavailableError(
            "this installation lacks the CUDA kernels (fastrnn.kernels.cuda); reinstall "
            "fastrnn") from None


# name -> (array module the backend works on, loader)
_REGISTRY = {
    "numpy": ("numpy", _load_numpy),
    "cpu": ("numpy", _load_cpu),
    "gpu": ("cupy", _load_gpu),
}
_CHOICES = tuple(_REGISTRY) + ("auto",)
_loaded = {}
_selected = None


def _load(name):
    """Return the backend module, or raise :class:`BackendUnavailableError` (cached)."""
    if name not in _loaded:
        try:
            _loaded[name] = _REGISTRY[name][1]()
        except BackendUnavailableError as exc:
            _loaded[name] = exc
    result = _loaded[name]
    if isinstance(result, BackendUnavailableError):
        raise BackendUnavailableError(f"backend {name!r} is not available: {result}")
    return result


def _check_name(name, what):
    if name not in _CHOICES:
        raise ValueError(f"{what}: expected one of {list(_CHOICES)}, got {name!r}")
    return name


def backends():
    """Say which backends exist, which can run here, and why the others cannot.

    Returns
    -------
    dict
        ``name -> {"available": bool, "array_module": "numpy" | "cupy", "reason": str | None}``
    """
    report = {}
    for name, (xp_name, _) in _REGISTRY.items():
        try:
            _load(name)
            report[name] = {"available": True, "array_module": xp_name, "reason": None}
        except BackendUnavailableError as exc:
            reason = str(exc).split(": ", 1)[1]
            report[name] = {"available": False, "array_module": xp_name, "reason": reason}
    return report


def set_backend(name):
    """Set the process-wide backend (``"numpy"``, ``"cpu"``, ``"gpu"``, ``"auto"``).

    ``None`` clears the setting, so ``FASTRNN_BACKEND`` or ``auto`` decide again. A named
    backend must be available now; the error says why it is not.
    """
    global _selected
    if name is not None:
        _check_name(name, "set_backend(name)")
        if name != "auto":
            _load(name)
    _selected = name


def get_backend():
    """The backend name that a call without ``backend=`` would ask for (may be ``"auto"``)."""
    if _selected is not None:
        return _selected
    env = os.environ.get(ENV_VAR)
    if env:
        return _check_name(env.strip().lower(), f"environment variable {ENV_VAR}")
    return "auto"


def is_cupy_array(a):
    return type(a).__module__.split(".")[0] == "cupy"


def array_module(*arrays, names=None):
    """Return ``numpy`` or ``cupy`` for the given arrays; error on mixed or foreign inputs.

    ``None`` entries are skipped. ``names`` labels the arrays in error messages: a list, or
    a function returning one (built only when there is an error to report).
    """
    if all(a is None or type(a) is np.ndarray for a in arrays):  # the common case
        return np
    names = names() if callable(names) else names
    names = names or [f"argument {k}" for k in range(len(arrays))]
    kinds = {}
    for name, a in zip(names, arrays):
        if a is None:
            continue
        if isinstance(a, np.ndarray):
            kinds.setdefault("numpy", name)
        elif is_cupy_array(a):
            kinds.setdefault("cupy", name)
        else:
            raise TypeError(
                f"{name}: expected a NumPy or CuPy array, got {type(a).__module__}."
                f"{type(a).__name__}")
    if len(kinds) > 1:
        raise TypeError(
            f"mixed array modules: {kinds['numpy']} is a NumPy array but {kinds['cupy']} is a "
            "CuPy array; move them to one device first (cupy.asarray / .get())")
    if kinds.get("cupy"):
        return importlib.import_module("cupy")
    return np


_warned = set()


def _warn_reference_fallback(exc):
    """Automatic selection runs NumPy arrays on the reference when the cpu backend cannot
    run: say so once per process, with the reason (``fastrnn info`` says it too)."""
    if "cpu" in _warned:
        return
    _warned.add("cpu")
    warnings.warn(f"fastrnn: {exc}; automatic backend selection runs NumPy arrays on the "
                  "NumPy reference, which is many times slower (fastrnn info says more)",
                  RuntimeWarning, stacklevel=4)


def resolve(backend, xp):
    """Pick the backend for a call on arrays of module ``xp``.

    Parameters
    ----------
    backend : str or None
        The call's or layer's ``backend=``; None defers to :func:`get_backend`.
    xp : module
        ``numpy`` or ``cupy``, from :func:`array_module`.

    Returns
    -------
    (name, module)
    """
    if backend is None:
        backend = get_backend()
    xp_name = xp.__name__
    hit = _resolved.get((backend, xp_name))
    if hit is not None and _loaded.get(hit[0]) is hit[1]:  # (still what is loaded)
        return hit  # (a call per step of a cell loop: skip the checks below)
    _check_name(backend, "backend")
    asked = backend
    if backend == "auto":
        if xp_name == "cupy":
            backend = "gpu"
        else:
            try:
                _load("cpu")
                backend = "cpu"
            except BackendUnavailableError as exc:
                _warn_reference_fallback(exc)
                backend = "numpy"
    module = _load(backend)
    wanted = _REGISTRY[backend][0]
    if wanted != xp_name:
        raise TypeError(
            f"backend {backend!r} works on {wanted} arrays, got {xp_name} arrays; pick a "
            f"backend for {xp_name} arrays or move the data")
    _resolved[(asked, xp_name)] = backend, module
    return backend, module


_resolved = {}  # (backend asked for, array module's name) -> resolve's answer


def array_module_for(backend):
    """The array module a layer built with ``backend=`` keeps its parameters in."""
    if backend is not None:
        _check_name(backend, "backend")
        if backend != "auto":
            _load(backend)
    if backend is not None and _REGISTRY.get(backend, ("numpy",))[0] == "cupy":
        return importlib.import_module("cupy")
    return np
