"""The kernel contract: what crosses between fastrnn's layers and a backend, by name.

Every backend module (:mod:`.reference`, :mod:`.cpu`, :mod:`.cuda.device`) has the same two
functions, for one layer and one direction::

    forward(cell, x, state, weights, seq=Sequence(), training=True, zoneout=None)
        -> y, state_n, saved
    backward(cell, saved, dy, dstate_n) -> dx, dstate0, dweights

- ``cell``: a name of :data:`.cells.CELLS`.
- ``x [T,B,I]``, time-major; ``y [T,B,S]``.
- ``state``, ``state_n``: :class:`State` ``(h [B,S], c [B,H])``, ``c`` None but for the
  LSTMs.
- ``weights``: :class:`Weights`; the fields a cell takes are :func:`weight_fields`'s
  (``b_ih`` and ``b_hh`` both arrays or both None).
- ``seq``: :class:`Sequence` ``(lengths, reverse)``. ``lengths`` (int ``[B]``, any order)
  gives each sequence's valid steps, PyTorch's packed-sequence semantics: outputs past a
  sequence's end are zero, its final state is the state after its last valid step, the
  reverse direction starts at its own last step, and a sequence of length 0 returns its
  initial state.
- ``zoneout [T,B,S]`` or None: the zoneout factors ``m`` of each step, ``h_t = m * h_{t-1}
  + (1 - m) * h~_t`` (``h~_t`` the cell's new state): drawn 0 or 1 in training, the rate
  ``p`` in eval. The LSTMs' ``c`` is not zoned out.
- ``training=True`` keeps in ``saved`` what backward needs (and nothing the caller can
  change: backends keep their own copies, or the caller guarantees the arrays stay);
  ``saved`` is the backend's own type, read only by its ``backward``; None when not
  training.
- ``dy [T,B,S]``; ``dstate_n``: :class:`State` of the final states' gradients, either
  member None for zero. ``dstate0``: the initial states' gradients (``c`` None but for the
  LSTMs); ``dweights``: :class:`Weights` of gradients, None where the call had no weight.
- Arrays come in and go out in the backend's array module (NumPy for ``numpy`` and
  ``cpu``, CuPy for ``gpu``), in the input's dtype (float32 or float64); inputs are never
  written.

Shapes follow the legend of docs/architecture.md.
"""

from typing import Any, NamedTuple

from .cells import get_cell


class Weights(NamedTuple):
    """One layer's and direction's weights, stored as PyTorch and cuDNN store them.

    ``w_ih [G*H,I]``, ``w_hh [G*H,S]``, ``b_ih, b_hh [G*H]`` (None without bias),
    ``peepholes [3,H]`` (``lstm_peephole``'s, rows i, f, o), ``w_hr [P,H]`` (an LSTM's
    projection, PyTorch's ``proj_size``); a layer-normalised cell's gains ``ln_ih``,
    ``ln_hh [G*H]`` (of ``LN(W_ih x)`` and ``LN(W_hh h)``) and, for the LSTMs, ``ln_c``,
    ``ln_c_bias [H]`` (gain and bias of ``LN(c)``). Gradients come back in the same
    type."""

    w_ih: Any
    w_hh: Any
    b_ih: Any = None
    b_hh: Any = None
    peepholes: Any = None
    w_hr: Any = None
    ln_ih: Any = None
    ln_hh: Any = None
    ln_c: Any = None
    ln_c_bias: Any = None

    def present(self):
        """``{field: array}`` of the weights this layer has, in field order."""
        return {name: a for name, a in zip(self._fields, self) if a is not None}

    def map(self, fn):
        """The same weights with ``fn`` applied to each array (None stays None)."""
        return Weights(*(None if a is None else fn(a) for a in self))


class State(NamedTuple):
    """A layer's recurrent state: ``h [B,S]``, and ``c [B,H]`` for the LSTMs (else None)."""

    h: Any
    c: Any = None


class Sequence(NamedTuple):
    """How a layer walks the steps: ``lengths`` (int ``[B]``, None for all ``T``) and
    ``reverse`` (walk time backwards)."""

    lengths: Any = None
    reverse: bool = False


# PyTorch's parameter name of each weight (``weight_ih_l0``, ``peephole_l0_reverse``, ...)
PARAMETER_NAMES = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih",
                   "b_hh": "bias_hh", "peepholes": "peephole", "w_hr": "weight_hr",
                   "ln_ih": "ln_weight_ih", "ln_hh": "ln_weight_hh", "ln_c": "ln_weight_c",
                   "ln_c_bias": "ln_bias_c"}

# The value a weight starts from when it does not start random (LayerNorm's gain and bias)
INITIAL_VALUES = {"ln_ih": 1.0, "ln_hh": 1.0, "ln_c": 1.0, "ln_c_bias": 0.0}

LN_EPS = 1e-5  # LayerNorm's epsilon (torch.nn.LayerNorm's default)


def weight_fields(cell, bias=True, projection=False, layer_norm=False):
    """The :class:`Weights` fields a layer of ``cell`` has, in field order."""
    spec = get_cell(cell)
    fields = ("w_ih", "w_hh") + (("b_ih", "b_hh") if bias else ())
    fields += ("peepholes",) if spec.peepholes else ()
    fields += ("w_hr",) if projection else ()
    if layer_norm:
        fields += ("ln_ih", "ln_hh") + (("ln_c", "ln_c_bias") if spec.has_cell_state else ())
    return fields


def weight_shapes(cell, in_size, hidden_size, proj_size=0):
    """``{field: shape}`` of every weight a layer of ``cell`` may have, for an input of
    ``in_size`` features, ``hidden_size`` units and a projection of ``proj_size`` (0:
    none)."""
    GH, H = get_cell(cell).gates * hidden_size, hidden_size
    return dict(w_ih=(GH, in_size), w_hh=(GH, proj_size or H), b_ih=(GH,), b_hh=(GH,),
                peepholes=(3, H), w_hr=(proj_size, H), ln_ih=(GH,), ln_hh=(GH,), ln_c=(H,),
                ln_c_bias=(H,))
