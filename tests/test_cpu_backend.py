"""What is particular to the cpu backend: threads, denormals, the cache, the FPU state."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastrnn
from fastrnn import functional as F
from fastrnn.kernels.cells import CELLS
from fastrnn.kernels.contract import State
from conftest import ALL_CELLS, assert_close, random_problem

pytestmark = pytest.mark.skipif(not fastrnn.backends()["cpu"]["available"],
                                reason="the cpu backend is not available")
# the cells whose loops may split the hidden units between threads (not gru_reset_before:
# its second product a step needs every unit's r * h)
SPLIT_CELLS = [c for c in ALL_CELLS if not CELLS[c].reset_before]


def _split_H(cell):
    """A hidden size big enough for the unit split, and not a multiple of 16."""
    return {"lstm": 144, "gru": 160}.get(CELLS[cell].family, 272)


def _run(backend, cell, x, weights, h0, c0, **kw):
    out, h_n, c_n, ctx = F.rnn(cell, x, weights, h0, c0, backend=backend, **kw)
    grads = F.rnn_backward(ctx, np.ones_like(out))
    return [out, h_n, grads[0], grads[1]] + [g for group in grads[3]
                                             for g in group.present().values()]


def _assert_matches_reference(cell, x, weights, h0, c0, dtype, training=True, **kw):
    """The cpu backend against the NumPy reference: outputs and final states, then (when
    training) the input, state and every weight gradient for a random output gradient."""
    got = F.rnn(cell, x, weights, h0, c0, training=training, backend="cpu", **kw)
    want = F.rnn(cell, x, weights, h0, c0, training=training, backend="numpy", **kw)
    for name, g, w in zip(("output", "h_n", "c_n"), got[:3], want[:3]):
        if w is not None:
            assert_close(g, w, dtype, name)
    if not training:
        return
    dy = np.random.default_rng(1).standard_normal(got[0].shape).astype(dtype)
    g_grads, w_grads = F.rnn_backward(got[3], dy), F.rnn_backward(want[3], dy)
    for g, w in zip(g_grads[:3], w_grads[:3]):
        if w is not None:
            assert_close(g, w, dtype, "state/input gradient")
    for gl, wl in zip(g_grads[3], w_grads[3]):
        assert list(gl.present()) == list(wl.present())
        for g, w in zip(gl.present().values(), wl.present().values()):
            assert_close(g, w, dtype, "weight gradient")


@pytest.mark.parametrize("cell", ["gru", "lstm", "lstm_peephole"])
def test_tiny_inputs_match_the_reference_and_leave_the_fpu_as_it_was(cell):
    x, weights, h0, c0 = random_problem(cell, 40, 6, 8, 16, 1, 1, np.float32, seed=3)
    x = (x * np.float32(1e-30)).astype(np.float32)
    got = _run("cpu", cell, x, weights, h0 * 0, None if c0 is None else c0 * 0)
    want = _run("numpy", cell, x, weights, h0 * 0, None if c0 is None else c0 * 0)
    for g, w in zip(got, want):
        assert np.abs(g - w).max() <= 2e-4 * max(np.abs(w).max(), 1e-30)
    # The kernels flush denormals only while they run: the caller's arithmetic keeps them.
    assert np.float32(1e-30) * np.float32(1e-10) > 0


def test_thread_count_follows_numba_and_gives_the_same_numbers(monkeypatch):
    import numba
    from fastrnn.kernels import cpu
    monkeypatch.setattr(cpu, "_MIN_WORK_PER_THREAD", 0)  # "many" really uses them all
    x, weights, h0, c0 = random_problem("lstm", 30, 16, 12, 32, 2, 2, np.float32, seed=4)
    kw = dict(num_layers=2, bidirectional=True)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _run("cpu", "lstm", x, weights, h0, c0, **kw)
        numba.set_num_threads(before)
        many = _run("cpu", "lstm", x, weights, h0, c0, **kw)
    finally:
        numba.set_num_threads(before)
    for a, b in zip(one, many):
        assert_close(a, b, np.float32)


@pytest.mark.parametrize("T,B,H", [(1, 4, 3), (1000, 20, 32), (7, 3, 64), (50, 129, 8)])
def test_row_blocks_cover_the_batch_once_and_balance(T, B, H):
    from fastrnn.kernels import cpu
    chunks = cpu._chunks(T, B, 4 * H, H)
    sizes = np.diff(chunks)
    assert chunks[0] == 0 and chunks[-1] == B and (sizes > 0).all()
    assert sizes.max() - sizes.min() <= 1


def test_runs_when_the_cache_directory_is_not_writable(tmp_path):
    code = ("import numpy as np, fastrnn; m = fastrnn.GRU(4, 8, backend='cpu', seed=0); "
            "ref = fastrnn.GRU(4, 8, backend='numpy', seed=0); x = np.ones((3, 2, 4), "
            "np.float32); print(float(np.abs(m(x)[0] - ref(x)[0]).max()))")
    env = dict(os.environ, NUMBA_CACHE_DIR="/proc/fastrnn-cannot-write-here")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert float(out.stdout) < 1e-5


def test_info_names_the_cache_and_threads():
    from fastrnn.cli import info_lines
    line = next(l for l in info_lines() if l.startswith("cpu backend:"))
    assert "threads" in line and "cache" in line and "pinned" in line


def test_pool_reuses_a_block_only_after_its_last_view_is_gone():
    from fastrnn.kernels.cpu import _alloc
    a = _alloc.empty((600, 1000), np.float32)
    a[:] = 7
    addr = a.ctypes.data
    view = a[100:200]
    del a
    b = _alloc.empty((600, 1000), np.float32)  # the first block is still in use
    assert b.ctypes.data != addr
    b[:] = 3
    assert np.all(view == 7)
    del view
    c = _alloc.empty((600, 1000), np.float32)
    assert c.ctypes.data == addr  # now it comes back
    assert c.shape == (600, 1000) and c.dtype == np.float32 and c.flags["C_CONTIGUOUS"]
    assert np.all(b == 3)
    small = _alloc.empty((3, 4), np.float64)
    assert small.base is None  # small arrays are plain NumPy


def test_two_forwards_before_backward_keep_their_saved_arrays():
    m = fastrnn.LSTM(24, 64, backend="cpu", seed=0)
    ref = fastrnn.LSTM(24, 64, backend="numpy", seed=0)
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((200, 16, 24)).astype(np.float32) for _ in range(2))
    ctxs = []
    for x in (x1, x2):  # the functional API keeps both contexts alive at once
        out, h_n, c_n, ctx = F.rnn("lstm", x, m._weights(),
                                   backend="cpu")
        ctxs.append((out, ctx))
    for x, (out, ctx) in zip((x1, x2), ctxs):
        want_out, _, _, want_ctx = F.rnn("lstm", x, ref._weights(),
                                         backend="numpy")
        assert_close(out, want_out, np.float32, "output")
        g = np.ones_like(out)
        assert_close(F.rnn_backward(ctx, g)[0], F.rnn_backward(want_ctx, g)[0], np.float32,
                     "grad_x")


@pytest.mark.parametrize("cell", SPLIT_CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [1, 2, 5])
def test_small_batches_split_the_units_and_match_the_reference(cell, dtype, B, monkeypatch):
    """Batches 1-2 use the row-dot kernel forward, computing the input projection inside
    the loop (T=9: a chunk of 8 steps, then 1); larger ones (made to split here by lowering
    the weight-size threshold, and to pack by lowering the row-dot line below their 45
    rows) the packed panels, with the projection a GEMM before the loop; backward always
    packs."""
    from fastrnn.kernels import cpu
    monkeypatch.setattr(cpu, "_MIN_WORK_PER_THREAD", 0)  # split even these short calls
    # (weights that fit beside each other in half of a 2 MB L2, whatever this CPU's L2)
    monkeypatch.setattr(cpu, "_UNIT_PROJECTION_BYTES", 1 << 20)
    if B > cpu._SPLIT_MAX_BATCH:
        monkeypatch.setattr(cpu, "_SPLIT_LARGE_BYTES", 0)
        monkeypatch.setattr(cpu, "_ROWDOT_MAX_ROWS", 4)
    H = _split_H(cell)
    # PyTorch's init scale: larger weights make a wide tanh RNN chaotic, and float32
    # rounding differences between any two summation orders then grow step by step.
    x, weights, h0, c0 = random_problem(cell, 9, B, 5, H, 2, 2, dtype, seed=B,
                                        scale=1 / np.sqrt(H))
    G = CELLS[cell].gates
    if cpu.num_threads() >= 2:
        units = cpu._unit_split(9, B, G * H, H)
        assert units is not None and units[0] == 0 and units[-1] == H
        assert all(u % 16 == 0 for u in units[:-1]) and np.all(np.diff(units) > 0)
    lengths = [9, 4, 9, 1, 7][:B]
    kw = dict(num_layers=2, bidirectional=True, lengths=lengths)
    calls, per = [], []
    for name in ("forward_loop_split", "backward_loop_split"):
        real = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *a, _real=real, _name=name: (
            calls.append(_name), per.append(a[1].per if _name == "forward_loop_split"
                                            else None), _real(*a))[2])
    for training in (True, False):
        _assert_matches_reference(cell, x, weights, h0, c0, dtype, training, **kw)
    if cpu.num_threads() >= 2 and len(os.sched_getaffinity(0)) >= 2:
        # the split loops really ran (inside a call the caller is pinned to one CPU, which
        # once made the split think it had one CPU and quietly fall back)
        assert calls.count("forward_loop_split") == 8  # 2 layers x 2 directions x 2 modes
        assert calls.count("backward_loop_split") == 4
        steps = [p for c, p in zip(calls, per) if c == "forward_loop_split"]
        assert steps == [cpu._UNIT_PROJECTION_STEPS if B <= 2 else 0] * 8


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru", "lstm_peephole"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_loop_projection_on_whole_vectors_matches_the_reference(cell, dtype,
                                                                    monkeypatch):
    """Batch 1-2, and a call of a few rows (6 x 19), with an input size of whole vectors:
    the loop's projection runs the vector dot kernels (I=5 elsewhere takes their scalar
    fallback), over chunks of 8, 8 and 3 steps, in both directions, with padding."""
    from fastrnn.kernels import cpu
    monkeypatch.setattr(cpu, "_MIN_WORK_PER_THREAD", 0)
    monkeypatch.setattr(cpu, "_UNIT_PROJECTION_BYTES", 1 << 20)  # (whatever this CPU's L2)
    per = []
    real = cpu.forward_loop_split
    monkeypatch.setattr(cpu, "forward_loop_split",
                        lambda *a: (per.append(a[1].per), real(*a))[1])
    H = _split_H(cell)
    for B in (1, 2, 6):
        x, weights, h0, c0 = random_problem(cell, 19, B, 64, H, 1, 2, dtype, seed=B,
                                            scale=1 / np.sqrt(H))
        for training in (True, False):
            _assert_matches_reference(cell, x, weights, h0, c0, dtype, training,
                                      bidirectional=True,
                                      lengths=[19, 12, 19, 3, 0, 19][:B])
    if cpu.num_threads() >= 2 and len(os.sched_getaffinity(0)) >= 2:
        # every forward (3 batches x 2 modes x 2 directions) projected inside the loop
        assert per == [cpu._UNIT_PROJECTION_STEPS] * 12


def test_l2_size_is_read_from_sysfs_and_defaults_when_unknown(tmp_path):
    from fastrnn.kernels.cpu import _caches
    for index, (level, kind, size) in enumerate([("1", "Data", "32K"),
                                                 ("1", "Instruction", "32K"),
                                                 ("2", "Unified", "512K"),
                                                 ("3", "Unified", "32768K")]):
        d = tmp_path / f"index{index}"
        d.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(value + "\n")
    assert _caches.l2_bytes(str(tmp_path)) == 512 * 1024
    (tmp_path / "index2" / "size").write_text("2M\n")
    assert _caches.l2_bytes(str(tmp_path)) == 2 << 20
    assert _caches.l2_bytes(str(tmp_path / "missing")) == _caches.DEFAULT_L2_BYTES
    (tmp_path / "index2" / "size").write_text("large\n")
    assert _caches.l2_bytes(str(tmp_path)) == _caches.DEFAULT_L2_BYTES


def test_unit_split_projects_inside_the_loop_only_when_its_weights_fit_half_of_l2(
        monkeypatch):
    """LSTM I=H=256 at batch 1 on two threads: 1 MB of w_ih and w_hh a thread. Beside a
    2 MB L2 (a Xeon's) the loop projects; beside 512 KB (a Zen 3 core's) a GEMM before the
    loop does, and the loop keeps its w_hh in cache."""
    from fastrnn.kernels import cpu
    from fastrnn.kernels.cpu import _caches
    assert cpu._UNIT_PROJECTION_BYTES == _caches.l2_bytes() // 2
    units = np.array([0, 128, 256], np.int64)
    for l2, want in ((2 << 20, "units"), (512 << 10, "gemm")):
        monkeypatch.setattr(cpu, "_UNIT_PROJECTION_BYTES", l2 // 2)
        assert cpu._projection(150, 1, 256, 1024, 256, 4, 2, units) == want
        # one step projects in the loop whatever the L2 (no later step needs w_hh there)
        assert cpu._projection(1, 16, 256, 1024, 256, 4, 2, units) == "units"
        assert cpu._projection(2, 16, 256, 1024, 256, 4, 2, units) == want


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("B", [1, 2, 5, 16])
def test_one_step_on_two_threads_projects_in_the_loop_and_matches_the_reference(
        cell, B, monkeypatch):
    """A one-step call split over two threads' unit blocks projects its input inside the
    loop even when the weights exceed the L2 line, and its backward packs nothing (at
    batch 1-2 it reads w_hh as it is, above that dh0 is one BLAS GEMM); lengths of 0 and 1
    included."""
    from fastrnn.kernels import cpu
    if cpu.num_threads() < 2 or cpu.usable_cpus() < 2:
        pytest.skip("needs two threads")
    monkeypatch.setattr(cpu, "_MIN_WORK_PER_THREAD", 0)
    monkeypatch.setattr(cpu, "_SPLIT_MIN_WEIGHTS", 0)  # two unit blocks at any size
    monkeypatch.setattr(cpu, "_UNIT_PROJECTION_BYTES", 0)  # the weights never "fit"
    pers, packs = [], []
    real, real_pack = cpu.forward_loop_split, cpu.pack_column_blocks
    monkeypatch.setattr(cpu, "forward_loop_split",
                        lambda *a: (pers.append((a[1].per, list(a[8]))), real(*a))[1])
    monkeypatch.setattr(cpu, "pack_column_blocks",
                        lambda *a: (packs.append(a[1]), real_pack(*a))[1])
    H = 64
    x, weights, h0, c0 = random_problem(cell, 1, B, 7, H, 1, 2, np.float32, seed=B,
                                        scale=1 / np.sqrt(H))
    lengths = [1, 0, 1, 1, 0][:B] + [1] * max(0, B - 5)
    _assert_matches_reference(cell, x, weights, h0, c0, np.float32, training=True,
                              bidirectional=True, lengths=lengths)
    assert len(pers) == 2 and all(per > 0 and len(u) == 3 for per, u in pers)
    assert not packs  # one step: w_hh read as it is (batch 1-2) or dh0 from BLAS


@pytest.mark.parametrize("cell", SPLIT_CELLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_step_of_many_rows_takes_blas_products_and_matches_the_reference(
        cell, dtype, monkeypatch):
    """A one-step call of many rows (a cell's) computes both products by BLAS and only the
    pointwise step in compiled code; lengths of 0 and 1, both directions."""
    from fastrnn.kernels import cpu
    monkeypatch.setattr(cpu, "_MIN_WORK_PER_THREAD", 10**12)  # one thread
    steps = []
    real = cpu._forward_step
    monkeypatch.setattr(cpu, "_forward_step", lambda *a: (steps.append(a[0]), real(*a))[1])
    B, H = cpu._STEP_GEMM_ROWS + 3, 37
    x, weights, h0, c0 = random_problem(cell, 1, B, 11, H, 1, 2, dtype, seed=3,
                                        scale=1 / np.sqrt(H))
    lengths = [1, 0] * (B // 2) + [1] * (B % 2)
    _assert_matches_reference(cell, x, weights, h0, c0, dtype, training=True,
                              bidirectional=True, lengths=lengths)
    _assert_matches_reference(cell, x, weights, h0, c0, dtype, training=False,
                              bidirectional=True)
    assert steps == [cell] * 4  # two directions, training and inference


@pytest.mark.parametrize("cell", ["rnn_relu", "lstm_peephole", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [1, 2])
def test_one_step_backward_on_unpacked_weights_matches_the_reference(cell, dtype, B,
                                                                      monkeypatch):
    """A training step of one or two rows on one thread (BPTT by hand with a cell): the
    backward reads w_hh as it is, and every gradient matches the reference."""
    from fastrnn.kernels import cpu
    packs = []
    real_pack = cpu.pack_column_blocks
    monkeypatch.setattr(cpu, "pack_column_blocks",
                        lambda *a: (packs.append(a[1]), real_pack(*a))[1])
    H = 48
    x, weights, h0, c0 = random_problem(cell, 1, B, 9, H, 2, 1, dtype, seed=3 + B,
                                        scale=1 / np.sqrt(H))
    _assert_matches_reference(cell, x, weights, h0, c0, dtype, training=True, num_layers=2)
    assert packs == []


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_step_with_strided_states_matches_the_reference_and_compiles_nothing_new(cell):
    """The kernel contract takes any NumPy states: a one-step call on views with strides
    (every other row of a larger array) gives the reference's results without compiling
    the one-step loop for another layout."""
    from fastrnn.kernels import cpu, reference
    from fastrnn.kernels.cpu import _split
    H, B = 32, 2
    x, weights, h0, c0 = random_problem(cell, 1, B, 5, H, 1, 1, np.float32, seed=11,
                                        scale=1 / np.sqrt(H))
    w, state = weights[0], State(h0[0], None if c0 is None else c0[0])
    cpu.forward(cell, x, state, w, training=False)
    before = len(_split.forward_rows.signatures)
    wide = np.repeat(h0[0], 2, axis=0)[::2]  # rows 0, 2 of a (2B, H) array: strided
    assert not wide.flags.c_contiguous
    c_wide = None if c0 is None else np.repeat(c0[0], 2, axis=0)[::2]
    got = cpu.forward(cell, x, State(wide, c_wide), w, training=False)
    want = reference.forward(cell, x, state, w, training=False)
    for g, r in zip((got[0], *got[1]), (want[0], *want[1])):
        if r is not None:
            assert_close(g, r, np.float32, "one-step result")
    assert len(_split.forward_rows.signatures) == before


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B", [1, 2, 4])
@pytest.mark.parametrize("weights_size", ["large", "small"])
def test_tiny_calls_run_on_one_thread_and_read_w_hh_unpacked(cell, dtype, B, weights_size,
                                                             monkeypatch):
    """A call with too little work for two threads (a step of generation) runs its compiled
    code on the caller alone and gives Numba's thread setting back; with a few rows in all
    it takes the unit-split loops with one block (w_hh read as it is, not packed), the
    forward outside any parallel region - whether or not w_hh is large enough for the
    unit split to pay on two threads."""
    import numba
    from fastrnn.kernels import cpu
    # w_hh at least _SPLIT_MIN_WEIGHTS elements, or well under it
    H = {"lstm": 128, "gru": 160}[cell] if weights_size == "large" else 24
    assert (CELLS[cell].gates * H * H >= cpu._SPLIT_MIN_WEIGHTS) == (weights_size == "large")
    x, weights, h0, c0 = random_problem(cell, 3, B, 5, H, 1, 2, dtype, seed=B,
                                        scale=1 / np.sqrt(H))
    seen = []
    for name in ("forward_rows", "forward_loop_serial", "forward_loop_split", "forward_loop",
                 "backward_loop_split", "pack", "pack_blocks"):
        real = getattr(cpu, name)

        def spy(*a, _real=real, _name=name, **kw):
            units = {"backward_loop_split": 7, "forward_rows": 11}.get(_name)
            units = None if units is None else list(a[units])
            seen.append((_name, units, cpu.num_threads()))
            return _real(*a, **kw)
        monkeypatch.setattr(cpu, name, spy)
    gemms = []
    real_matmul = cpu.matmul
    monkeypatch.setattr(cpu, "matmul", lambda *a: (gemms.append(a), real_matmul(*a))[1])
    before = numba.get_num_threads()
    _assert_matches_reference(cell, x, weights, h0, c0, dtype, bidirectional=True,
                              lengths=[3, 2, 1, 3][:B])
    # only the backward's dx, dw_ih and dw_hh (two directions): the forward's input
    # projection came from the row-dot kernel, not a BLAS GEMM
    assert len(gemms) == 6
    assert numba.get_num_threads() == before
    # the forward: one compiled call a direction (forward_rows, which starts no parallel
    # region and reads w_hh as it is: nothing packed); the backward: one unit block on one
    # thread
    names = [n for n, _, _ in seen]
    assert names.count("forward_rows") == 2 and names.count("backward_loop_split") == 2
    assert len(seen) == 4
    assert all(units == [0, H] for _, units, _ in seen)
    assert all(threads == 1 for n, _, threads in seen if n == "backward_loop_split")


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_serial_loop_runs_any_number_of_unit_blocks(cell, monkeypatch):
    """The serial forward (forward_rows) walks every unit block on the caller: with two
    blocks (a one-thread call never asks for more than one, but the loop does not rely on
    it) it matches the reference, lengths and reverse included."""
    from fastrnn.kernels import cpu
    H = 96
    x, weights, h0, c0 = random_problem(cell, 4, 3, 5, H, 1, 2, np.float64, seed=5,
                                        scale=1 / np.sqrt(H))
    monkeypatch.setattr(cpu, "_unit_split", lambda *a: np.array([0, 48, H]))
    monkeypatch.setattr(cpu, "_threads_for", lambda *a: 1)
    seen = []
    real = cpu.forward_rows
    monkeypatch.setattr(cpu, "forward_rows", lambda *a: (seen.append(list(a[11])), real(*a))[1])
    _assert_matches_reference(cell, x, weights, h0, c0, np.float64, training=False,
                              bidirectional=True, lengths=[4, 2, 3])
    assert seen == [[0, 48, H]] * 2


def test_split_path_survives_serialised_threads(monkeypatch):
    """If Numba runs both unit blocks on one thread, that thread does all of them."""
    import numba
    from fastrnn.kernels import cpu
    if cpu.num_threads() < 2:
        pytest.skip("needs two threads")
    monkeypatch.setattr(cpu, "_MIN_WORK_PER_THREAD", 0)
    x, weights, h0, c0 = random_problem("lstm", 5, 1, 4, 192, 1, 1, np.float32, seed=0,
                                        scale=1 / np.sqrt(192))
    assert cpu._unit_split(5, 1, 4 * 192, 192) is not None
    before = numba.get_parallel_chunksize()
    numba.set_parallel_chunksize(2)  # one thread takes both iterations of the prange
    try:
        got = F.rnn("lstm", x, weights, h0, c0, training=True, backend="cpu")
        grads = F.rnn_backward(got[3], np.ones_like(got[0]))
    finally:
        numba.set_parallel_chunksize(before)
    want = F.rnn("lstm", x, weights, h0, c0, training=True, backend="numpy")
    assert_close(got[0], want[0], np.float32, "output")
    assert_close(grads[0], F.rnn_backward(want[3], np.ones_like(want[0]))[0], np.float32,
                 "input gradient")


def test_pinning_gives_the_caller_back_its_affinity():
    from fastrnn.kernels.cpu import _affinity
    mine = os.sched_getaffinity(0)
    cpus = _affinity.plan(2)
    if cpus is None:
        pytest.skip("pinning needs two usable CPUs")
    with _affinity.pinned(2):
        assert os.sched_getaffinity(0) == {cpus[0]}
    assert os.sched_getaffinity(0) == mine
    with pytest.raises(ZeroDivisionError):  # and after an error too
        with _affinity.pinned(2):
            1 / 0
    assert os.sched_getaffinity(0) == mine


def test_openmp_wait_settings_respect_the_user_and_do_not_leak():
    """GNU's runtime gets a short spin, any other sleeps at once, a user's own
    OMP_WAIT_POLICY or GOMP_SPINCOUNT wins; the settings are gone from the environment
    once the pool runs (child processes and other libraries see the user's)."""
    from fastrnn.kernels.cpu import _jit
    assert _jit.wait_settings({}, True) == {"GOMP_SPINCOUNT": str(_jit._SPIN_COUNT)}
    assert _jit.wait_settings({}, False) == {"OMP_WAIT_POLICY": "PASSIVE"}
    for user in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}):
        assert _jit.wait_settings(user, True) == {} and _jit.wait_settings(user, False) == {}
    code = ("import os, fastrnn.kernels.cpu as k; "
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["None", "None"]


def test_pinning_can_be_turned_off():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("with one usable CPU every thread's set has one CPU anyway")
    code = ("import os, numpy as np, fastrnn; from fastrnn.kernels.cpu import _affinity; "
            "print(_affinity.plan(2)); m = fastrnn.LSTM(64, 64, backend='cpu', seed=0); "
            "m(np.ones((50, 8, 64), np.float32)); "
            "print(sorted(len(os.sched_getaffinity(int(t))) "
            "for t in os.listdir('/proc/self/task')))")
    env = dict(os.environ, FASTRNN_PIN_THREADS="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert out[0] == "None"
    assert str(len(os.sched_getaffinity(0))) in out[1] and "[1," not in out[1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# rows r0..r1 are B-2 of them: tiles of MR (8 with AVX-512, else 6), 4, 2 and 1 in every
# mix, with AVX2 also the last 8 or 9 rows as two tiles of 4 (B 10, 11, 17); from 1 MB of
# weights (K=256, N=1024) the tiles prefetch the next panel
@pytest.mark.parametrize("B,K,N", [(13, 37, 70), (8, 256, 1024), (3, 5, 3), (20, 32, 128),
                                   (20, 256, 1024), (10, 256, 1024), (11, 37, 70),
                                   (17, 64, 96)])
@pytest.mark.parametrize("transpose", [True, False])
@pytest.mark.parametrize("step", [0, 1])  # odd steps walk the panels in reverse
def test_packed_gemm_matches_numpy_on_any_row_range(dtype, B, K, N, transpose, step):
    from fastrnn.kernels.cpu._gemm import gemm_packed, pack, panel_width
    rng = np.random.default_rng(B + K)
    a = rng.standard_normal((B, K)).astype(dtype)
    w = rng.standard_normal((N, K) if transpose else (K, N)).astype(dtype)
    wp = pack(w, transpose)
    assert wp.shape[2] == panel_width(dtype) and wp.shape[0] * wp.shape[2] >= N
    want = a.astype(np.float64) @ (w.T if transpose else w).astype(np.float64)
    out = np.full((B, wp.shape[0] * wp.shape[2]), np.nan, dtype)
    r0, r1 = (1, B - 1) if B > 2 else (0, B)
    if K == 256 and B in (10, 20):
        from fastrnn.kernels.cpu import _gemm
        assert wp.nbytes >= _gemm._PREFETCH_BYTES
    gemm_packed(a, r0, r1, wp, out, step)
    assert_close(out[r0:r1, :N], want[r0:r1].astype(dtype), dtype, "rows in range")
    assert np.all(out[r0:r1, N:] == 0)  # the padding columns of the last panel
    assert np.all(np.isnan(out[:r0])) and np.all(np.isnan(out[r1:]))  # other rows untouched


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(301, 17, 40),    # split by rows
                                   (17, 40, 301),    # by columns
                                   (9, 1001, 23)])   # along K, partial products summed
@pytest.mark.parametrize("transposed", [False, True])  # a weight gradient's ``dg.T``
def test_split_gemm_matches_numpy_whichever_way_it_splits(dtype, M, K, N, transposed,
                                                           monkeypatch):
    from fastrnn.kernels.cpu import _blas
    monkeypatch.setattr(_blas, "_MIN_SPLIT_WORK", 0)  # split even these small products
    rng = np.random.default_rng(M + K)
    a = rng.standard_normal((K, M)).astype(dtype).T if transposed else \
        rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    out = np.full((M, N), np.nan, dtype)
    with _blas.single_threaded_blas():
        assert _blas.matmul(a, b, out) is out
    assert_close(out, (a.astype(np.float64) @ b.astype(np.float64)).astype(dtype), dtype,
                 "product")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("contiguous", [True, False])
def test_gemm_of_inner_dimension_one_is_the_outer_product(dtype, contiguous):
    """A weight gradient of a one-row call: ``dg.T @ x`` over one row, into a whole array
    or into a block of one (the GRU's n rows)."""
    from fastrnn.kernels.cpu import _blas
    rng = np.random.default_rng(7)
    a = rng.standard_normal((1, 30)).astype(dtype).T
    b = rng.standard_normal((1, 11)).astype(dtype)
    full = np.full((30, 14), np.nan, dtype)
    out = full[:, :11] if not contiguous else np.full((30, 11), np.nan, dtype)
    assert out.flags.c_contiguous == contiguous
    with _blas.single_threaded_blas():
        assert _blas.matmul(a, b, out) is out
    assert_close(out, (a.astype(np.float64) @ b.astype(np.float64)).astype(dtype), dtype,
                 "outer product")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K", [256, 40])  # a whole number of vectors, and not (fallback)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 9])  # groups of 4, 2 and 1 rows of a
@pytest.mark.parametrize("back", [False, True])  # the weight rows walked from the last
def test_matvec_matches_numpy_on_any_row_and_column_range(dtype, K, rows, back):
    from fastrnn.kernels.cpu._gemm import matvec
    rng = np.random.default_rng(K + rows)
    a = rng.standard_normal((rows + 2, K)).astype(dtype)
    w = rng.standard_normal((37, K)).astype(dtype)
    out = np.full((rows + 2, 37), np.nan, dtype)
    matvec(a, 1, rows + 1, w, 2, 35, out, back)
    want = (a.astype(np.float64) @ w.T.astype(np.float64)).astype(dtype)
    assert_close(out[1:rows + 1, 2:35], want[1:rows + 1, 2:35], dtype, "products")
    assert np.all(np.isnan(out[0])) and np.all(np.isnan(out[rows + 1]))
    assert np.all(np.isnan(out[:, :2])) and np.all(np.isnan(out[:, 35:]))


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("fused,rows", [(True, 256), (True, 7), (True, 1), (False, 256)])
def test_input_projection_inside_or_before_the_loop_matches_the_reference(cell, fused, rows,
                                                                          monkeypatch):
    """Both ways of the batch-split forward: the projection inside the loop (small weights;
    a product every few steps: here 8, 2 or 1 for the 3 rows of each thread, the first two
    ending on a partial chunk at T=11) or one GEMM before it (forced here by the size
    threshold); rows split between threads even at this size."""
    from fastrnn.kernels import cpu
    monkeypatch.setattr(cpu, "_FUSE_MAX_BYTES", 1 << 40 if fused else 0)
    monkeypatch.setattr(cpu, "_MIN_WORK_PER_THREAD", 0)
    monkeypatch.setattr(cpu, "_PROJECTION_ROWS", rows)
    x, weights, h0, c0 = random_problem(cell, 11, 6, 7, 24, 2, 2, np.float64, seed=5)
    kw = dict(num_layers=2, bidirectional=True, lengths=[11, 3, 8, 11, 1, 6])
    for training in (True, False):
        _assert_matches_reference(cell, x, weights, h0, c0, np.float64, training, **kw)


@pytest.mark.parametrize("cell", [c for c in ALL_CELLS if CELLS[c].family == "lstm"])
@pytest.mark.parametrize("B,fused", [(1, False), (5, True), (5, False)])
def test_a_projection_runs_the_batch_split_and_matches_the_reference(cell, B, fused,
                                                                     monkeypatch):
    """An LSTM with a projection (P=40 of H=144) splits the batch even at batch 1, where
    the unit split would otherwise run; its input projection inside the loop or before."""
    from fastrnn.kernels import cpu
    monkeypatch.setattr(cpu, "_FUSE_MAX_BYTES", 1 << 40 if fused else 0)
    monkeypatch.setattr(cpu, "_MIN_WORK_PER_THREAD", 0)
    calls = []
    for name in ("forward_loop", "forward_loop_split", "forward_loop_serial",
                 "backward_loop", "backward_loop_split"):
        real = getattr(cpu, name)
        monkeypatch.setattr(cpu, name, lambda *a, _real=real, _name=name: (
            calls.append(_name), _real(*a))[1])
    H, P = 144, 40
    x, weights, h0, c0 = random_problem(cell, 9, B, 5, H, 2, 2, np.float32, seed=B,
                                        scale=1 / np.sqrt(H), proj_size=P)
    kw = dict(num_layers=2, bidirectional=True, lengths=[9, 4, 9, 1, 0][:B])
    for training in (True, False):
        _assert_matches_reference(cell, x, weights, h0, c0, np.float32, training, **kw)
    assert set(calls) == {"forward_loop", "backward_loop"}


def test_calls_from_a_second_thread_are_not_pinned_and_still_correct(monkeypatch):
    import threading
    from fastrnn.kernels import cpu
    from fastrnn.kernels.cpu import _affinity
    monkeypatch.setattr(cpu, "_MIN_WORK_PER_THREAD", 0)  # calls big enough to pin
    x, weights, h0, c0 = random_problem("gru", 30, 8, 16, 64, 1, 1, np.float32, seed=7)
    want = F.rnn("gru", x, weights, h0, c0, training=False, backend="numpy")[0]
    F.rnn("gru", x, weights, h0, c0, training=False, backend="cpu")  # this thread first
    seen = {}

    def other():
        before = os.sched_getaffinity(0)
        with _affinity.pinned(2):
            seen["inside"] = os.sched_getaffinity(0) == before
        seen["out"] = F.rnn("gru", x, weights, h0, c0, training=False, backend="cpu")[0]
    t = threading.Thread(target=other)
    t.start()
    t.join()
    if _affinity._owner is not None:  # pinning is on: this thread owns it, the other not
        assert seen["inside"]
    assert_close(seen["out"], want, np.float32, "output from the second thread")


def test_calls_from_several_threads_at_once_match_the_reference(monkeypatch):
    """Three Python threads calling the backend at the same time (a server answering
    requests in threads): each call's parallel region, barriers, GEMM pool and BLAS
    thread setting must not disturb the others'. Both loop kinds (unit split at batch 1,
    batch split) and training, every call checked."""
    import threading
    from fastrnn.kernels import cpu
    monkeypatch.setattr(cpu, "_MIN_WORK_PER_THREAD", 0)  # every call opens a parallel region
    problems = []
    for i, (cell, T, B, H) in enumerate([("lstm", 30, 1, 256), ("gru", 20, 12, 64),
                                         ("rnn_tanh", 15, 16, 128), ("gru", 25, 2, 128)]):
        x, w, h0, c0 = random_problem(cell, T, B, 16, H, 1, 1, np.float32, seed=i,
                                      scale=1 / np.sqrt(H))
        want = _run("numpy", cell, x, w, h0, c0)
        problems.append((cell, x, w, h0, c0, want))
    failures = []

    def work(k):
        try:
            for i in range(12):
                cell, x, w, h0, c0, want = problems[(k + i) % len(problems)]
                for g, v in zip(_run("cpu", cell, x, w, h0, c0), want):
                    assert_close(g, v, np.float32, f"{cell} from thread {k}")
        except Exception as e:  # (an assertion in a thread would otherwise be lost)
            failures.append(e)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]


@pytest.mark.parametrize("B,H", [(5, 16), (1, 256)])  # rows split; hidden units split
def test_read_only_inputs_match_the_reference_and_compile_nothing_new(B, H):
    """Arrays a user cannot write to (a memory-mapped file, ``np.frombuffer``) are as good
    as any: same results, and no loop compiled again for them (Numba specialises on
    writability: that would be seconds on first use)."""
    from fastrnn.kernels.cpu import _loops, _split
    loops = (_loops.forward_loop, _loops.backward_loop, _split.forward_loop_split,
             _split.forward_loop_serial, _split.forward_rows, _split.backward_loop_split)
    x, weights, h0, c0 = random_problem("lstm", 12, B, 6, H, 1, 1, np.float32, seed=2,
                                        scale=1 / np.sqrt(H))
    lengths = np.arange(12, 12 - B, -1, dtype=np.int64)
    _run("cpu", "lstm", x, weights, h0, c0, lengths=lengths)  # compiled for writable ones
    before = [len(f.signatures) for f in loops]

    def frozen(a):
        a = a.copy()
        a.flags.writeable = False
        return a
    out, h_n, _, ctx = F.rnn("lstm", frozen(x), [weights[0].map(frozen)],
                             frozen(h0), frozen(c0), lengths=frozen(lengths), backend="cpu")
    grads = F.rnn_backward(ctx, frozen(np.ones_like(out)))  # (as _run, with a frozen dy)
    got = [out, h_n, grads[0], grads[1]] + [g for group in grads[3]
                                            for g in group.present().values()]
    want = _run("numpy", "lstm", x, weights, h0, c0, lengths=lengths)
    for g, w in zip(got, want):
        assert_close(g, w, np.float32, "read-only inputs")
    assert [len(f.signatures) for f in loops] == before


def test_more_threads_than_cpus_still_match_the_reference():
    """NUMBA_NUM_THREADS above the CPU count: the unit split keeps one thread per CPU (its
    threads meet every step), the batch split uses them all; results unchanged."""
    cpus = len(os.sched_getaffinity(0))
    code = (
        "import sys, numpy as np; sys.path.insert(0, %r)\n"
        "from conftest import random_problem, assert_close\n"
        "from fastrnn import functional as F\n"
        "from fastrnn.kernels import cpu\n"
        "units = cpu._unit_split(200, 1, 1024, 256)\n"
        "assert units is None or units.size - 1 <= %d, units\n"
        "for cell, B, H in (('lstm', 1, 256), ('gru', 6, 64)):\n"
        "    x, w, h0, c0 = random_problem(cell, 200, B, 32, H, 1, 1, np.float32, seed=1,\n"
        "                                  scale=1 / np.sqrt(H))\n"
        "    got = F.rnn(cell, x, w, h0, c0, training=True, backend='cpu')\n"
        "    want = F.rnn(cell, x, w, h0, c0, training=True, backend='numpy')\n"
        "    assert_close(got[0], want[0], np.float32, 'output')\n"
        "    dy = np.ones_like(got[0])\n"
        "    assert_close(F.rnn_backward(got[3], dy)[0], F.rnn_backward(want[3], dy)[0],\n"
        "                 np.float32, 'input gradient')\n"
        "print('ok')\n") % (os.path.dirname(__file__), cpus)
    env = dict(os.environ, NUMBA_NUM_THREADS=str(cpus + 1))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("parallel", [False, True])
def test_packing_blocks_matches_a_plain_copy(parallel, monkeypatch):
    from fastrnn.kernels.cpu import _gemm
    monkeypatch.setattr(_gemm, "_PARALLEL_PACK_BYTES", 0 if parallel else 1 << 62)
    w = np.random.default_rng(3).standard_normal((90, 70)).astype(np.float32)
    nr = _gemm.panel_width(np.float32)
    for columns, blocks in ((False, [(0, 40), (40, 90), (5, 6)]), (True, [(0, 33), (33, 70)])):
        pack = _gemm.pack_column_blocks if columns else _gemm.pack_blocks
        wp, starts = pack(w, blocks)
        for i, (lo, hi) in enumerate(blocks):
            W = w[:, lo:hi] if columns else w[lo:hi].T  # [K, n]
            got = wp[starts[i]:starts[i + 1]].transpose(1, 0, 2).reshape(W.shape[0], -1)
            assert got.shape[1] == (starts[i + 1] - starts[i]) * nr
            assert np.array_equal(got[:, :W.shape[1]], W)
            assert np.all(got[:, W.shape[1]:] == 0)


def test_a_bad_pinning_setting_is_a_clear_error(monkeypatch):
    from fastrnn.kernels.cpu import _affinity
    monkeypatch.setenv("FASTRNN_PIN_THREADS", "off")
    with pytest.raises(ValueError, match="FASTRNN_PIN_THREADS must be '0'.*got 'off'"):
        _affinity.plan(2)


def test_cached_kernels_compiled_from_other_sources_are_dropped(tmp_path):
    """Numba checks a cached function against its own file only; a changed helper in
    another file (an activation, a cell's step) drops this package's cache files."""
    from fastrnn.kernels.cpu import _stale
    ours = ["_loops.forward_loop-97.py311.nbi", "_split.forward_rows-141.py311.2.nbc"]
    theirs = ["mymodel.step-3.py311.nbi", "notes.txt"]
    for name in ours + theirs:
        (tmp_path / name).write_text("x")
    (tmp_path / _stale.STAMP).write_text("0" * 64)  # compiled from other sources
    assert _stale.clear_if_stale(str(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs + [_stale.STAMP])
    assert (tmp_path / _stale.STAMP).read_text().strip() == _stale.sources_hash()
    (tmp_path / ours[0]).write_text("x")  # compiled from these sources: kept
    assert _stale.clear_if_stale(str(tmp_path)) == 0 and (tmp_path / ours[0]).exists()


def test_the_first_call_of_a_process_checks_the_cache_once(monkeypatch):
    from fastrnn.kernels import cpu
    seen = []
    monkeypatch.setattr(cpu, "_cache_checked", False)
    monkeypatch.setattr(cpu._stale, "clear_if_stale", lambda d: seen.append(d) or 0)
    x, weights, h0, c0 = random_problem("gru", 3, 2, 4, 5, 1, 1, np.float32, seed=0)
    for _ in range(2):
        F.rnn("gru", x, weights, h0, c0, backend="cpu")
    assert seen == [cpu.cache_dir()]
