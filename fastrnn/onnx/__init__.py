"""ONNX for fastrnn: run the standard's ``LSTM``, ``GRU`` and ``RNN`` nodes
(:class:`Backend`, an ``onnx.backend.base.Backend``), export layers that ONNX Runtime runs
(:func:`export`) and rebuild them from such a file (:func:`load`). Needs the ``onnx``
package (``pip install fastrnn[onnx]``)."""

try:
    import onnx  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fastrnn.onnx needs the onnx package: pip install fastrnn[onnx]") from exc

from ._backend import Backend, BackendRep, prepare, run_node, supports_device
from ._export import export, load
from ._nodes import UnsupportedNodeError

__all__ = ["Backend", "BackendRep", "prepare", "run_node", "supports_device", "export",
           "load", "UnsupportedNodeError"]
