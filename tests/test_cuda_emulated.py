"""The gpu backend's CUDA kernels (``kernels/cuda/rnn.cu``, compiled as it is for the CPU by
``kernels/cuda/emulation.py``) against the NumPy reference, launched by the same code that
launches them on a GPU (``kernels/cuda/contract.py``): every cell, training forward and
backward and inference, weights in shared and in global memory, one block and several,
padding, reverse, float32 and float64. Small shapes: every CUDA thread is a fiber here."""

import shutil

import numpy as np
import pytest

from conftest import ALL_CELLS, assert_close
from fastrnn.kernels import reference
from fastrnn.kernels.cells import get_cell
from fastrnn.kernels.contract import Sequence, State, Weights

pytestmark = [pytest.mark.cuda_emulated,
              pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                 reason="no host C++ compiler for the CUDA emulation")]

# (multiprocessors, shared memory a block may opt in to, H): how the layer runs
LAYOUTS = {
    "blocks-smem": (3, 48 * 1024, 40),   # 3 blocks of 14 units, weights in shared memory
    "blocks-global": (3, 0, 40),         # the same with every weight in global memory
    "one-block": (3, 48 * 1024, 24),     # H <= 32: one block, no grid barrier
    "uneven": (4, 48 * 1024, 37),        # 4 blocks of 10 units, the last with 7
}


@pytest.fixture(scope="module")
def emulation():
    from fastrnn.kernels.cuda import emulation
    try:
        emulation.build()
    except emulation.EmulationUnavailableError as exc:
        pytest.fail(str(exc))  # a compiler is present: the kernels must build
    return emulation


def _problem(cell, T, B, I, H, dtype, seed, proj_size=0):
    """Input, :class:`State`, :class:`Weights` (with the peepholes, and with ``proj_size``
    a projection ``w_hr [P,H]``) and the generator."""
    rng = np.random.default_rng(seed)
    spec = get_cell(cell)
    G = spec.gates
    S = proj_size or H
    scale = 1 / np.sqrt(H)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    h0 = rng.standard_normal((B, S)).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype) if spec.has_cell_state else None
    w = Weights(*[rng.uniform(-scale, scale, s).astype(dtype)
                  for s in ((G * H, I), (G * H, S), (G * H,), (G * H,))])
    if spec.peepholes:
        w = w._replace(peepholes=rng.uniform(-1, 1, (3, H)).astype(dtype))
    if proj_size:
        w = w._replace(w_hr=rng.uniform(-scale, scale, (S, H)).astype(dtype))
    return x, State(h0, c0), w, rng


def _flat(results):
    """A forward's or backward's results with its states and weights spread out."""
    return [a for r in results for a in (r if isinstance(r, tuple) else (r,))]


CASES = [(cell, 0) for cell in ALL_CELLS] + [
    (cell, 7) for cell in ALL_CELLS if get_cell(cell).family == "lstm"]  # (a projection)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("cell,proj_size", CASES,
                         ids=[f"{c}-proj{p}" if p else c for c, p in CASES])
def test_training_forward_and_backward_match_the_reference(emulation, cell, proj_size,
                                                           layout, dtype):
    """With a projection, P = 7 state units are shared out unevenly (3 blocks: 3, 3, 1)."""
    sms, smem, H = LAYOUTS[layout]
    T, B, I = 6, 3, 5
    rt = emulation.Runtime(sms=sms, smem_optin=smem)
    for k, (reverse, lengths) in enumerate([(False, None), (True, [6, 2, 0]),
                                            (False, [1, 6, 4])]):
        x, state, w, rng = _problem(cell, T, B, I, H, dtype, seed=k, proj_size=proj_size)
        if k == 2:  # the last case without biases
            w = w._replace(b_ih=None, b_hh=None)
        seq = Sequence(lengths, reverse)
        want = reference.forward(cell, x, state, w, seq)
        got = rt.forward(cell, x, state, w, seq)
        what = f"{cell} {layout} reverse={reverse} lengths={lengths}"
        for name, g, r in zip(("y", "h_n", "c_n"), _flat(got[:2]), _flat(want[:2])):
            if r is None:
                assert g is None
            else:
                assert_close(g, r, dtype, f"{what}: {name}")
        dy = rng.standard_normal(x.shape[:2] + (proj_size or H,)).astype(dtype)
        dh_n = rng.standard_normal((B, proj_size or H)).astype(dtype)
        dc_n = rng.standard_normal((B, H)).astype(dtype) if state.c is not None else None
        grads_want = _flat(reference.backward(cell, want[2], dy, State(dh_n, dc_n)))
        grads_got = _flat(rt.backward(cell, got[2], dy, State(dh_n, dc_n)))
        names = ("dx", "dh0", "dc0") + tuple("d" + f for f in Weights._fields)
        assert len(grads_got) == len(grads_want) == len(names)
        for name, g, r in zip(names, grads_got, grads_want):
            if r is None:
                assert g is None, f"{what}: {name}"
            else:
                assert_close(g, r, dtype, f"{what}: {name}")
    # the plan really ran the layout under test
    blocks = {name: b for name, b, _, _ in rt.launches}
    on_chip = [name.endswith("true>") for name in blocks]
    assert all(on_chip) if smem else not any(on_chip)
    expected_blocks = 1 if H <= 32 else -(-H // -(-H // sms))
    assert set(blocks.values()) == {expected_blocks}


@pytest.mark.parametrize("cell,proj_size", CASES,
                         ids=[f"{c}-proj{p}" if p else c for c, p in CASES])
def test_inference_matches_the_reference(emulation, cell, proj_size):
    rt = emulation.Runtime(sms=3, smem_optin=48 * 1024)
    x, state, w, _ = _problem(cell, 5, 2, 4, 36, np.float64, seed=7, proj_size=proj_size)
    seq = Sequence([5, 3])
    want = reference.forward(cell, x, state, w, seq, training=False)
    got = rt.forward(cell, x, state, w, seq, training=False)
    assert got[2] is None
    for name, g, r in zip(("y", "h_n", "c_n"), _flat(got[:2]), _flat(want[:2])):
        if r is not None:
            assert_close(g, r, np.float64, f"{cell}: {name}")
    assert all("false, true>" in name for name, _, _, _ in rt.launches)  # TRAINING=false


def test_a_wrong_launch_is_seen(emulation, monkeypatch):
    """The comparison can fail: blocks that together own fewer units than the layer has
    (a plan of 3 blocks of 5 units for 40) leave units unwritten."""
    from fastrnn.kernels.cuda import contract
    rt = emulation.Runtime(sms=3, smem_optin=48 * 1024)
    x, state, w, _ = _problem("gru", 6, 3, 5, 40, np.float64, seed=3)
    want = reference.forward("gru", x, state, w)[0]
    assert_close(rt.forward("gru", x, state, w)[0], want, np.float64, "right plan")
    real = contract.plan
    monkeypatch.setattr(contract, "plan", lambda *a: real(*a)._replace(units=5, smem=0,
                                                                       on_chip=False))
    y = rt.forward("gru", x, state, w)[0]
    assert np.isnan(y[:, :, 15:]).all()  # unwritten: the emulation's buffers start as NaN
    # the owned units' first step is right; later steps read the unwritten ones
    assert_close(y[0, :, :15], want[0, :, :15], np.float64, "step 0, the units owned")
    assert np.isnan(y[1:]).all()


def test_unknown_kernel_and_too_much_shared_memory_are_clear_errors(emulation):
    rt = emulation.Runtime()
    with pytest.raises(RuntimeError, match="no kernel of that name"):
        rt.launch("rnn_forward<int, 9, true, true>", 1, 32, 0, ())
    with pytest.raises(RuntimeError, match="more dynamic shared memory"):
        rt.launch("rnn_forward<float, 0, true, true>", 1, 32, 10 ** 7, ())


LN_CASES = [("lstm", 0), ("lstm_peephole", 7), ("gru", 0), ("rnn_tanh", 0), ("lstm", 7)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("cell,proj_size", LN_CASES, ids=[f"{c}-proj{p}" for c, p in LN_CASES])
@pytest.mark.parametrize("layer_norm,zoneout", [(True, True), (True, False), (False, True)],
                         ids=["ln-zoneout", "ln", "zoneout"])
def test_layer_norm_and_zoneout_match_the_reference(emulation, cell, proj_size, layout, dtype,
                                                    layer_norm, zoneout):
    """A layer-normalised cell's norms reduce across the grid's blocks each step (LN(W_hh
    h) over all G*H gates, LN(c') over the H units), forward and backward; zoneout mixes
    each step's state: outputs, states and every gradient (the gains' too) equal the
    reference, with lengths and reverse."""
    from fastrnn.kernels.contract import INITIAL_VALUES, weight_fields, weight_shapes
    sms, smem, H = LAYOUTS[layout]
    T, B, I = 6, 3, 5
    rt = emulation.Runtime(sms=sms, smem_optin=smem)
    for k, (reverse, lengths) in enumerate([(False, None), (True, [6, 2, 0])]):
        x, state, w, rng = _problem(cell, T, B, I, H, dtype, seed=k, proj_size=proj_size)
        if layer_norm:
            shapes = weight_shapes(cell, I, H, proj_size)
            w = w._replace(**{f: (rng.uniform(-0.3, 0.3, shapes[f]) + INITIAL_VALUES[f]
                                  ).astype(dtype)
                              for f in weight_fields(cell, layer_norm=True, bias=False)
                              if f.startswith("ln_")})
        S = proj_size or H
        zone = (rng.random((T, B, S)) < 0.4).astype(dtype) if zoneout else None
        seq = Sequence(lengths, reverse)
        want = reference.forward(cell, x, state, w, seq, zoneout=zone)
        got = rt.forward(cell, x, state, w, seq, zoneout=zone)
        what = f"{cell} {layout} reverse={reverse} lengths={lengths}"
        for name, g, r in zip(("y", "h_n", "c_n"), _flat(got[:2]), _flat(want[:2])):
            if r is not None:
                assert_close(g, r, dtype, f"{what}: {name}")
        dy = rng.standard_normal((T, B, S)).astype(dtype)
        dh_n = rng.standard_normal((B, S)).astype(dtype)
        dc_n = rng.standard_normal((B, H)).astype(dtype) if state.c is not None else None
        grads_want = _flat(reference.backward(cell, want[2], dy, State(dh_n, dc_n)))
        grads_got = _flat(rt.backward(cell, got[2], dy, State(dh_n, dc_n)))
        names = ("dx", "dh0", "dc0") + tuple("d" + f for f in Weights._fields)
        for name, g, r in zip(names, grads_got, grads_want):
            if r is None:
                assert g is None, f"{what}: {name}"
            elif dtype == np.float32 and layer_norm:  # (a norm's backward in float32)
                assert np.abs(g - r).max() <= 1e-3 * np.abs(r).max(), f"{what}: {name}"
            else:
                assert_close(g, r, dtype, f"{what}: {name}")
