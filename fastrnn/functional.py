"""Stacked, bidirectional recurrent networks over the one-layer kernel contract.

Time-major throughout: ``x [T,B,I]``, ``output [T,B,D*H]``, ``h0, h_n [L*D,B,H]`` (an
LSTM with a projection of ``P`` units: ``output [T,B,D*P]``, ``h0, h_n [L*D,B,P]``, and
still ``c0, c_n [L*D,B,H]``).
Layer ``l`` and direction ``d`` live at index ``l*D + d`` of ``weights``, ``h0`` and
``h_n``, as in PyTorch. Dropout (inverted, training only) acts on the outputs of every layer
but the last.
"""

import numpy as np

from . import dispatch
from ._checks import check_array, check_lengths, probability
from .kernels.cells import get_cell
from .kernels.contract import Sequence, State, Weights, weight_fields, weight_shapes
from .kernels.fingerprint import fingerprint
from .kernels.quantize import Quantized, is_quantized


class WeightChangedError(RuntimeError):
    """A weight that backward needs was changed in place after the forward call.

    ``index`` is ``(k, field)``: the :class:`Weights` ``weights[k]`` and the field's name
    (``"w_ih"``, ``"w_hh"``, ``"peepholes"``, ``"w_hr"``).
    """

    def __init__(self, message, index):
        super().__init__(message)
        self.index = index


def _needed_weights(weights):
    """Fingerprints of what backward reads from the weights, ``(field, print)`` per layer
    and direction: all but the biases, whose values do not enter the gradients."""
    return [[(name, fingerprint(a)) for name, a in w.present().items()
             if name not in ("b_ih", "b_hh")] for w in weights]


def _check_weight_list(weights, L, D):
    """``weights`` is a list of ``L*D`` :class:`Weights`, or a clear error."""
    if not isinstance(weights, (list, tuple)) or isinstance(weights, Weights) or not weights:
        raise TypeError(f"weights: expected a list of {L * D} fastrnn.Weights (one per layer "
                        f"and direction), got {type(weights).__name__} {weights!r:.60}")
    if len(weights) != L * D:
        raise ValueError(f"weights: expected {L * D} Weights for {L} layer(s) x {D} "
                         f"direction(s), got {len(weights)}")
    for k, w in enumerate(weights):
        if not isinstance(w, Weights):
            raise TypeError(f"weights[{k}]: expected fastrnn.Weights(w_ih, w_hh, b_ih, b_hh, "
                            f"peepholes, w_hr), got {type(w).__name__}")


def _check_weights(weights, spec, D, I, dtype):
    """``H`` and ``P`` (0 without a projection) from ``weights[0]``, every layer's and
    direction's :class:`Weights` checked against them, or a clear error."""
    first = weights[0]
    projection = first.w_hr is not None
    if projection and spec.family != "lstm":
        raise ValueError(f"weights[0].w_hr: only the LSTMs have a projection, got an array "
                         f"for {spec.name!r}")
    check_array("weights[0].w_hh", first.w_hh, 2, None)
    H = first.w_hh.shape[1]  # (w_hh [G*H,H]; with a projection, w_hr [P,H])
    if projection:
        check_array("weights[0].w_hr", first.w_hr, 2, None)
        H = first.w_hr.shape[1]
    P = first.w_hr.shape[0] if projection else 0
    if is_quantized(first) and dtype != np.float32:
        raise TypeError(f"x: quantized weights run float32 inputs, got dtype {dtype}")
    if projection and not 0 < P < H:
        raise ValueError(f"weights[0].w_hr: expected a projection [P,H] with 0 < P < H={H}, "
                         f"got shape {tuple(first.w_hr.shape)}")
    layer_norm = first.ln_ih is not None
    if layer_norm and spec.reset_before:
        raise ValueError(f"weights[0].ln_ih: layer_norm is not defined for {spec.name!r} "
                         "(its reset gate acts inside the recurrent product); use the GRU "
                         "with reset_after=True")
    fields = weight_fields(spec.name, first.b_ih is not None, projection, layer_norm)
    for k, w in enumerate(weights):
        got = tuple(w.present())
        if got != fields:
            raise ValueError(f"weights[{k}]: expected the fields {fields} for {spec.name!r} "
                             f"(b_ih and b_hh both arrays or both None), got {got}")
        shapes = weight_shapes(spec.name, I if k < D else D * (P or H), H, P)
        for name, a in w.present().items():
            if isinstance(a, Quantized):  # (its values are checked when it is made)
                if a.shape != shapes[name]:
                    raise ValueError(f"weights[{k}].{name}: expected shape {shapes[name]}, "
                                     f"got {a.shape}")
                continue
            check_array(f"weights[{k}].{name}", a, len(shapes[name]), dtype, shapes[name])
    return H, P


def _arrays(w):
    """The arrays of a :class:`Weights` (a quantized matrix's values for it)."""
    return [a.values if isinstance(a, Quantized) else a for a in w if a is not None]


def _check_inference(weights, training, save, backend_name):
    """Quantized weights run inference only, on the numpy and cpu backends."""
    if not any(is_quantized(w) for w in weights):
        return
    if training or save:
        raise ValueError("weights: quantized weights run inference only; call with "
                         "training=False and save=False (a quantized layer: .eval())")
    if backend_name not in ("numpy", "cpu"):
        raise ValueError(f"weights: quantized weights run on the numpy and cpu backends, "
                         f"not on {backend_name!r}")


def _check_states(spec, h0, c0, dtype, h_shape, c_shape):
    if h0 is not None:
        check_array("h0", h0, 3, dtype, h_shape)
    if spec.has_cell_state:
        if c0 is not None:
            check_array("c0", c0, 3, dtype, c_shape)
    elif c0 is not None:
        raise ValueError(f"c0: only the LSTM has a cell state, got an array for "
                         f"{spec.name!r}")


def _rng_for(xp, rng):
    """A generator of ``xp``'s arrays: NumPy's as given, or for CuPy one seeded from it
    (masks are drawn where the data lives; nothing crosses between host and device)."""
    if rng is None:
        return xp.random.default_rng()
    if xp is not np and isinstance(rng, np.random.Generator):
        return xp.random.default_rng(int(rng.integers(2**63)))
    return rng


def rnn(cell, x, weights, h0=None, c0=None, *, num_layers=1, bidirectional=False,
        lengths=None, dropout=0.0, zoneout=0.0, training=True, rng=None, backend=None,
        save=None, guard=True):
    """Run a stacked, optionally bidirectional recurrent network.

    Parameters
    ----------
    cell : str
        A name of :data:`fastrnn.kernels.cells.CELLS` (``"lstm"``, ``"gru"``,
        ``"rnn_tanh"``, ...).
    x : array [T,B,I]
    weights : list of :class:`fastrnn.Weights`
        One per layer and direction, index ``l*D + d``: ``w_ih [G*H,in]``, ``w_hh
        [G*H,H]``, ``b_ih, b_hh [G*H]`` (or both None), ``lstm_peephole``'s ``peepholes
        [3,H]`` (rows i, f, o), and for an LSTM with a projection (PyTorch's
        ``proj_size``) ``w_hr [P,H]``, ``h = w_hr @ (o * tanh(c))``: the state ``h`` and
        the outputs then have ``P`` units (``w_hh [G*H,P]``, ``h0 [L*D,B,P]``). ``in`` is
        ``I`` for the first layer and ``D*H`` (``D*P``) above it.
    h0, c0 : array [L*D,B,H] or None
        Initial states (zeros when None); ``c0`` only for the LSTM.
    lengths : int array [B] or sequence, optional
        Valid steps per sequence (packed-sequence semantics).
    dropout : float
        Probability of zeroing an element between layers (training only).
    zoneout : float
        Zoneout rate ``p`` on the state ``h`` (Krueger et al.): in training each unit of
        each sequence keeps its previous value with probability ``p`` at every step (masks
        from ``rng``), ``h_t = m * h_{t-1} + (1 - m) * h~_t``; in eval ``m = p``. The
        LSTMs' ``c`` is not zoned out. A layer-normalised cell (``Weights`` with
        ``ln_ih``, ``ln_hh`` and for the LSTMs ``ln_c``, ``ln_c_bias``) normalises
        ``W_ih x``, ``W_hh h`` (and the LSTMs' ``c'`` before its ``tanh``) with those gains,
        as Ba et al.'s LayerNorm LSTM.
    training : bool
        Apply dropout, and (unless ``save`` says otherwise) keep what :func:`rnn_backward`
        needs.
    rng : numpy.random.Generator or cupy.random.Generator, optional
        Source of the dropout masks (any object whose ``random(shape)`` gives uniform
        floats in [0, 1) as arrays of the input's array module).
    backend : str, optional
        ``"numpy"``, ``"cpu"``, ``"gpu"`` or ``"auto"``; see :mod:`fastrnn.dispatch`.
    save : bool, optional
        Keep what :func:`rnn_backward` needs; defaults to ``training`` (gradients in eval
        mode: ``training=False, save=True``; dropout without gradients: the reverse).
    guard : bool
        When saving: copy the input and the initial states, and fingerprint the weights,
        so that :func:`rnn_backward` computes the gradients of this call (or refuses with
        :class:`WeightChangedError`) whatever the caller changes in place afterwards.
        False: the caller guarantees that ``x``, ``h0``, ``c0`` and the weights stay as
        they are until :func:`rnn_backward` (``fastrnn.torch`` does: PyTorch's saved
        tensors check their versions); nothing is copied or fingerprinted.

    Returns
    -------
    output [T,B,D*H], h_n [L*D,B,H], c_n [L*D,B,H] or None, ctx (None unless saving)
    """
    spec = get_cell(cell)
    save = training if save is None else bool(save)
    check_array("x", x, 3)
    T, B, I = x.shape
    dtype = x.dtype
    L, D = int(num_layers), 2 if bidirectional else 1
    if L < 1:
        raise ValueError(f"num_layers: expected an integer >= 1, got {num_layers}")
    _check_weight_list(weights, L, D)
    xp = dispatch.array_module(x, h0, c0, *[a for w in weights for a in _arrays(w)],
                               names=lambda: ["x", "h0", "c0"] + [
                                   f"weights[{k}].{name}" for k, w in enumerate(weights)
                                   for name in w.present()])
    name, kernel = dispatch.resolve(backend, xp)
    H, P = _check_weights(weights, spec, D, I, dtype)
    _check_inference(weights, training, save, name)
    S = P or H  # the state's size
    _check_states(spec, h0, c0, dtype, (L * D, B, S), (L * D, B, H))
    dropout, zoneout = probability("dropout", dropout), probability("zoneout", zoneout)
    lengths = check_lengths(lengths, B, T)
    # (the caller's states are copied when saving: the kernels may keep them for backward)
    copy = save and guard
    h0 = xp.zeros((L * D, B, S), dtype) if h0 is None else h0.copy() if copy else h0
    if spec.has_cell_state:
        c0 = xp.zeros((L * D, B, H), dtype) if c0 is None else c0.copy() if copy else c0

    inp = xp.ascontiguousarray(x)
    weight_prints = None
    if copy:
        # Backward needs the input, the initial states and the weights as forward saw them.
        # The caller's input is copied, unless making it contiguous already did (the states
        # were copied above); the weights are fingerprinted instead (a pass at memory
        # speed), and rnn_backward checks them.
        if inp is x:
            inp = x.copy()
        weight_prints = _needed_weights(weights)
    drop = dropout if training else 0.0
    zone = _Zoneout(zoneout, training, (T, B, S), dtype, rng, xp) if zoneout else None
    out, h_n, c_n, saved, masks = _layers(kernel, spec, inp, State(h0, c0), weights, L, D,
                                          lengths, save, drop, rng, xp, zone)
    ctx = None
    if save:
        ctx = dict(cell=spec.name, kernel=kernel, backend=name, saved=saved, masks=masks,
                   L=L, D=D, H=H, S=S, shape=(T, B, I), dtype=dtype, out_shape=out.shape,
                   weights=list(weights), weight_prints=weight_prints)
    return out, h_n, c_n, ctx


def _layers(kernel, spec, inp, state0, weights, L, D, lengths, save, dropout, rng, xp,
            zoneout=None):
    """Every layer and direction on the kernel contract: the output, ``h_n``, ``c_n``, what
    each saved, and the dropout masks between layers; ``zoneout``: a :class:`_Zoneout`
    (each layer's and direction's factors), or None."""
    h0, c0 = state0
    B, S, H = h0.shape[1], h0.shape[2], weights[0].w_hh.shape[0] // spec.gates
    h_n = xp.empty((L * D, B, S), h0.dtype)
    c_n = xp.empty((L * D, B, H), h0.dtype) if spec.has_cell_state else None
    saved, masks = [], []
    rng = _rng_for(xp, rng) if dropout > 0 and L > 1 else None
    for layer in range(L):
        outs = []
        for d in range(D):
            k = layer * D + d
            extra = {} if zoneout is None else {"zoneout": zoneout.factors()}
            y, last, s = kernel.forward(
                spec.name, inp, State(h0[k], None if c0 is None else c0[k]), weights[k],
                Sequence(lengths, d == 1), training=save, **extra)
            outs.append(y)
            saved.append(s)
            h_n[k] = last.h
            if c_n is not None:
                c_n[k] = last.c
        out = outs[0] if D == 1 else xp.concatenate(outs, axis=2)
        if dropout > 0 and layer < L - 1:
            masks.append(_dropout_mask(out.shape, out.dtype, dropout, rng, xp))
            out = out * masks[-1]
        inp = out
    return out, h_n, c_n, saved, masks


class _Zoneout:
    """Zoneout factors of rate ``p`` for one layer and direction at a time: drawn 0 or 1
    (1 with probability ``p``: the unit keeps its state) in training, ``p`` in eval."""

    def __init__(self, p, training, shape, dtype, rng, xp):
        self.p, self.training, self.shape, self.dtype, self.xp = p, training, shape, dtype, xp
        self.rng = _rng_for(xp, rng) if training else None

    def factors(self):
        if not self.training:
            return self.xp.full(self.shape, self.p, self.dtype)
        return (self.rng.random(self.shape) < self.p).astype(self.dtype)


def _dropout_mask(shape, dtype, p, rng, xp):
    """Inverted dropout's multipliers: 0 with probability ``p``, else ``1 / (1 - p)``."""
    if p == 1.0:  # every unit dropped (as torch: zeros, not 0 / 0)
        return xp.zeros(shape, dtype)
    keep = rng.random(shape) >= p
    return keep.astype(dtype) / dtype.type(1 - p)


def rnn_backward(ctx, grad_output, grad_h_n=None, grad_c_n=None):
    """Backpropagation through time for one :func:`rnn` call that saved (``training=True``
    or ``save=True``).

    Parameters
    ----------
    ctx : dict
        The fourth value :func:`rnn` returned.
    grad_output : array [T,B,D*H] ([T,B,D*P] with a projection)
    grad_h_n, grad_c_n : array [L*D,B,H] ([L*D,B,P] for ``grad_h_n`` with a projection) or
        None (zero)

    Returns
    -------
    grad_x [T,B,I], grad_h0 [L*D,B,H], grad_c0 [L*D,B,H] or None,
    grad_weights : list of :class:`fastrnn.Weights`, index ``l*D + d``: each weight's
        gradient, None where the layer has no such weight
    """
    if ctx is None:
        raise RuntimeError("rnn_backward: ctx is None; run rnn(..., training=True) (or "
                           "save=True) first")
    spec = get_cell(ctx["cell"])
    L, D, H, S, dtype = ctx["L"], ctx["D"], ctx["H"], ctx["S"], ctx["dtype"]
    T, B, _ = ctx["shape"]
    xp = dispatch.array_module(grad_output, grad_h_n, grad_c_n,
                               names=["grad_output", "grad_h_n", "grad_c_n"])
    check_array("grad_output", grad_output, 3, dtype, ctx["out_shape"])
    for name, g, size in (("grad_h_n", grad_h_n, S), ("grad_c_n", grad_c_n, H)):
        if g is not None:
            check_array(name, g, 3, dtype, (L * D, B, size))
    if grad_c_n is not None and not spec.has_cell_state:
        raise ValueError(f"grad_c_n: only the LSTM has a cell state, got an array for "
                         f"{spec.name!r}")
    for k, (w, prints) in enumerate(zip(ctx["weights"], ctx["weight_prints"] or ())):
        for field, before in prints:
            if fingerprint(getattr(w, field)) != before:
                layer, d = divmod(k, D)
                raise WeightChangedError(
                    f"rnn_backward: weights[{k}].{field} (layer {layer}"
                    f"{', reverse direction' if d else ''}) was changed in place after the "
                    "forward call, so the gradients would not match the outputs; run forward "
                    "again after changing weights (an optimizer step belongs after backward)",
                    (k, field))
    kernel = ctx["kernel"]
    grad_h0 = xp.empty((L * D, B, S), dtype)
    grad_c0 = xp.empty((L * D, B, H), dtype) if spec.has_cell_state else None
    grad_weights = [None] * (L * D)
    dy = grad_output
    for layer in range(L - 1, -1, -1):
        if layer < L - 1 and ctx["masks"]:
            dy = dy * ctx["masks"][layer]
        dx = None
        for d in range(D):
            k = layer * D + d
            dy_d = xp.ascontiguousarray(dy[:, :, d * S:(d + 1) * S])
            dx_d, dstate0, grad_weights[k] = kernel.backward(
                spec.name, ctx["saved"][k], dy_d, State(
                    None if grad_h_n is None else xp.ascontiguousarray(grad_h_n[k]),
                    None if grad_c_n is None else xp.ascontiguousarray(grad_c_n[k])))
            if dx is None:
                dx = dx_d
            else:  # (in place: dx is the other direction's fresh result)
                dx += dx_d
            grad_h0[k] = dstate0.h
            if grad_c0 is not None:
                grad_c0[k] = dstate0.c
        dy = dx
    return dy, grad_h0, grad_c0, grad_weights
