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
from ._checks import check_array, check_lengths
from .kernels.cells import get_cell
from .kernels.fingerprint import fingerprint


class WeightChangedError(RuntimeError):
    """A weight that backward needs was changed in place after the forward call.

    ``index`` is ``(k, j)``: the tuple ``weights[k]`` and its entry ``j`` (0 ``w_ih``, 1
    ``w_hh``, from 4 on the extra weights of :func:`weight_names`).
    """

    def __init__(self, message, index):
        super().__init__(message)
        self.index = index


def _needed_weights(weights):
    """Fingerprints of what backward reads from the weights, ``(j, print)`` per tuple:
    all but the biases, whose values do not enter the gradients."""
    return [[(j, fingerprint(g[j])) for j in range(len(g)) if j not in (2, 3)]
            for g in weights]


def weight_names(cell, proj_size=0):
    """The entries of one layer's and direction's weight tuple for ``cell``: ``w_ih``,
    ``w_hh``, ``b_ih``, ``b_hh``, then the extra weights (``peepholes``, ``w_hr``)."""
    names = ("w_ih", "w_hh", "b_ih", "b_hh")
    if get_cell(cell).peepholes:
        names += ("peepholes",)
    return names + ("w_hr",) if proj_size else names


def _check_proj_size(proj_size, spec):
    if isinstance(proj_size, bool) or not isinstance(proj_size, (int, np.integer)):
        raise TypeError(f"proj_size: expected an integer, got {proj_size!r}")
    if proj_size < 0:
        raise ValueError(f"proj_size: expected an integer >= 0, got {proj_size}")
    if proj_size and spec.family != "lstm":
        raise ValueError(f"proj_size: only the LSTMs have a projection, got proj_size="
                         f"{proj_size} for {spec.name!r}")
    return int(proj_size)


def _check_weights(weights, spec, L, D, I, H, S, dtype, proj_size):
    names = weight_names(spec.name, proj_size)
    what = f"({', '.join(names)})"
    if len(weights) != L * D:
        raise ValueError(
            f"weights: expected {L * D} {what} tuples for {L} layer(s) x "
            f"{D} direction(s), got {len(weights)}")
    GH = spec.gates * H
    for k, group in enumerate(weights):
        if len(group) != len(names):
            raise ValueError(f"weights[{k}]: expected {what} for {spec.name!r}, got "
                             f"{len(group)} entries")
        w_ih, w_hh, b_ih, b_hh = group[:4]
        if spec.peepholes:
            check_array(f"weights[{k}].peepholes", group[4], 2, dtype, (3, H))
        if proj_size:
            check_array(f"weights[{k}].w_hr", group[-1], 2, dtype, (proj_size, H))
        in_size = I if k < D else D * S
        check_array(f"weights[{k}].w_ih", w_ih, 2, dtype, (GH, in_size))
        check_array(f"weights[{k}].w_hh", w_hh, 2, dtype, (GH, S))
        if (b_ih is None) != (b_hh is None):
            raise ValueError(f"weights[{k}]: b_ih and b_hh must both be arrays or both None")
        if b_ih is not None:
            check_array(f"weights[{k}].b_ih", b_ih, 1, dtype, (GH,))
            check_array(f"weights[{k}].b_hh", b_hh, 1, dtype, (GH,))


def _rng_for(xp, rng):
    """A generator of ``xp``'s arrays: NumPy's as given, or for CuPy one seeded from it
    (masks are drawn where the data lives; nothing crosses between host and device)."""
    if rng is None:
        return xp.random.default_rng()
    if xp is not np and isinstance(rng, np.random.Generator):
        return xp.random.default_rng(int(rng.integers(2**63)))
    return rng


def rnn(cell, x, weights, h0=None, c0=None, *, num_layers=1, bidirectional=False,
        lengths=None, dropout=0.0, training=True, rng=None, backend=None, save=None,
        proj_size=0, guard=True):
    """Run a stacked, optionally bidirectional recurrent network.

    Parameters
    ----------
    cell : str
        A name of :data:`fastrnn.kernels.cells.CELLS` (``"lstm"``, ``"gru"``,
        ``"rnn_tanh"``, ...).
    x : array [T,B,I]
    weights : sequence of (w_ih [G*H,in], w_hh [G*H,H], b_ih [G*H] | None, b_hh | None)
        One tuple per layer and direction, index ``l*D + d``; ``in`` is ``I`` for the
        first layer and ``D*H`` above it. Extra entries follow: ``lstm_peephole``'s
        ``peepholes [3,H]`` (rows i, f, o), then with ``proj_size`` the projection
        ``w_hr [P,H]`` (``w_hh`` is then ``[G*H,P]`` and ``in`` above the first layer
        ``D*P``).
    h0, c0 : array [L*D,B,H] or None
        Initial states (zeros when None); ``c0`` only for the LSTM.
    lengths : int array [B] or sequence, optional
        Valid steps per sequence (packed-sequence semantics).
    dropout : float
        Probability of zeroing an element between layers (training only).
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
    proj_size : int
        ``P > 0``: the LSTMs' projection of PyTorch's ``proj_size``, ``h = w_hr @ (o *
        tanh(c))``; the state ``h`` and the outputs have ``P`` units (``h0 [L*D,B,P]``).
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
    xp = dispatch.array_module(x, h0, c0, *[w for g in weights for w in g],
                               names=lambda: ["x", "h0", "c0"] + [
                                   f"weights[{k}][{j}]" for k in range(len(weights))
                                   for j in range(len(weights[k]))])
    name, kernel = dispatch.resolve(backend, xp)
    check_array("x", x, 3)
    T, B, I = x.shape
    dtype = x.dtype
    L, D = int(num_layers), 2 if bidirectional else 1
    if L < 1:
        raise ValueError(f"num_layers: expected an integer >= 1, got {num_layers}")
    if not weights:
        raise ValueError(f"weights: expected at least one "
                         f"({', '.join(weight_names(cell, proj_size))}) tuple")
    proj_size = _check_proj_size(proj_size, spec)
    # H from w_hh [G*H,H], or with a projection from w_hr [P,H] (checked below)
    H = getattr(weights[0][-1 if proj_size else 1], "shape", (0,))[-1]
    S = proj_size or H  # the state's size
    _check_weights(weights, spec, L, D, I, H, S, dtype, proj_size)
    if proj_size and proj_size >= H:
        raise ValueError(f"proj_size: expected less than the hidden size {H}, got "
                         f"{proj_size}")
    if h0 is not None:
        check_array("h0", h0, 3, dtype, (L * D, B, S))
    if spec.has_cell_state:
        if c0 is not None:
            check_array("c0", c0, 3, dtype, (L * D, B, H))
    elif c0 is not None:
        raise ValueError(f"c0: only the LSTM has a cell state, got an array for {cell!r}")
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout}")
    lengths = check_lengths(lengths, B, T)
    # (the caller's states are copied when saving: the kernels may keep them for backward)
    copy = save and guard
    h0 = xp.zeros((L * D, B, S), dtype) if h0 is None else h0.copy() if copy else h0
    if spec.has_cell_state:
        c0 = xp.zeros((L * D, B, H), dtype) if c0 is None else c0.copy() if copy else c0

    h_n = xp.empty((L * D, B, S), dtype)
    c_n = xp.empty((L * D, B, H), dtype) if spec.has_cell_state else None
    saved, masks = [], []
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
    for layer in range(L):
        outs = []
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, b_ih, b_hh = weights[k][:4]
            extra = {}
            if spec.peepholes:
                extra["peepholes"] = weights[k][4]
            if proj_size:
                extra["w_hr"] = weights[k][-1]
            y, h_last, c_last, s = kernel.forward(
                spec.name, inp, h0[k], c0[k] if c0 is not None else None,
                w_ih, w_hh, b_ih, b_hh, lengths=lengths, reverse=d == 1, training=save,
                **extra)
            outs.append(y)
            saved.append(s)
            h_n[k] = h_last
            if c_n is not None:
                c_n[k] = c_last
        out = outs[0] if D == 1 else xp.concatenate(outs, axis=2)
        if training and dropout > 0 and layer < L - 1:
            rng = _rng_for(xp, rng)
            if dropout == 1.0:  # every unit dropped (as torch: zeros, not 0 / 0)
                keep = xp.zeros(out.shape, dtype)
            else:
                keep = (rng.random(out.shape) >= dropout).astype(dtype) / dtype.type(
                    1 - dropout)
            out = out * keep
            masks.append(keep)
        inp = out
    ctx = None
    if save:
        ctx = dict(cell=spec.name, kernel=kernel, backend=name, saved=saved, masks=masks,
                   L=L, D=D, H=H, S=S, proj_size=proj_size, shape=(T, B, I), dtype=dtype,
                   has_bias=weights[0][2] is not None, out_shape=out.shape,
                   weights=list(weights), weight_prints=weight_prints)
    return out, h_n, c_n, ctx


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
    grad_weights : list of (dw_ih, dw_hh, db_ih | None, db_hh | None), index ``l*D + d``,
        then the extra weights' gradients as in the weight tuples (``dpeepholes``,
        ``dw_hr``)
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
    names = weight_names(spec.name, ctx["proj_size"])
    for k, (group, prints) in enumerate(zip(ctx["weights"], ctx["weight_prints"] or ())):
        for j, before in prints:
            if fingerprint(group[j]) != before:
                layer, d = divmod(k, D)
                raise WeightChangedError(
                    f"rnn_backward: weights[{k}][{j}] ({names[j]} of layer {layer}"
                    f"{', reverse direction' if d else ''}) was changed in place after the "
                    "forward call, so the gradients would not match the outputs; run forward "
                    "again after changing weights (an optimizer step belongs after backward)",
                    (k, j))
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
            dx_d, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, extra = kernel.backward(
                spec.name, ctx["saved"][k], dy_d,
                None if grad_h_n is None else xp.ascontiguousarray(grad_h_n[k]),
                None if grad_c_n is None else xp.ascontiguousarray(grad_c_n[k]))
            if dx is None:
                dx = dx_d
            else:  # (in place: dx is the other direction's fresh result)
                dx += dx_d
            grad_h0[k] = dh0
            if grad_c0 is not None:
                grad_c0[k] = dc0
            grad_weights[k] = (dw_ih, dw_hh, db_ih, db_hh) + tuple(extra)
        dy = dx
    return dy, grad_h0, grad_c0, grad_weights
