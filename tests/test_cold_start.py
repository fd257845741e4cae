"""What a new process pays before its first result: ``import fastrnn`` loads no compiler
and starts no thread, a call compiles its own cell's kernels and no other's, and
``fastrnn compile`` fills the cache ahead of time. (How long each takes is measured by
``benchmarks/cold_start.py``, not here.)"""

import subprocess
import sys

import pytest


def _run(code, **kw):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, **kw)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_import_loads_no_compiler_and_starts_no_thread():
    out = _run("import sys, threading\n"
               "import fastrnn\n"
               "print(sorted(m for m in ('numba', 'llvmlite', 'torch', 'fastrnn.kernels.cpu')"
               " if m in sys.modules), threading.active_count())")
    assert out.split() == ["[]", "1"]


@pytest.mark.parametrize("cell,other", [("lstm", "gru"), ("gru", "rnn_tanh")])
def test_a_call_compiles_its_own_cells_kernels_only(cell, other):
    """After a training call of one cell (batch split and the one-step path), the loops of
    that cell exist and no other cell's: each cell's loops are their own compiled
    functions."""
    out = _run(
        "import numpy as np, fastrnn\n"
        "from fastrnn.kernels.cpu import _loops, _split, CELL_IDS\n"
        f"layer = {{'lstm': fastrnn.LSTM, 'gru': fastrnn.GRU}}[{cell!r}](8, 16, seed=0)\n"
        "x = np.random.default_rng(0).standard_normal((5, 4, 8)).astype(np.float32)\n"
        "y, _ = layer(x)\n"
        "layer.backward(np.ones_like(y))\n"
        "layer.eval()(x[:1, :1])\n"
        "for name, cid in sorted(CELL_IDS.items()):\n"
        "    kernels = [*_loops.batch_loops(cid), *_split.unit_loops(cid)]\n"
        "    print(name, sum(len(k.signatures) for k in kernels))\n")
    counts = dict(line.split() for line in out.splitlines())
    assert int(counts[cell]) >= 3  # forward and backward loops, the one-step path
    assert all(int(n) == 0 for name, n in counts.items() if name != cell), counts
    assert other in counts


def test_fastrnn_compile_fills_the_cache_and_info_lists_it(tmp_path):
    """``fastrnn compile`` for one cell and dtype, then ``fastrnn info`` lists what is
    compiled; a bad choice is an error that names it."""
    out = subprocess.run([sys.executable, "-m", "fastrnn.cli", "compile", "--cells",
                          "rnn_relu", "--dtypes", "float64", "--jobs", "1"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1/1 rnn_relu float64" in out.stderr
    assert "compiled 1 cell and dtype pairs in" in out.stdout
    info = subprocess.run([sys.executable, "-m", "fastrnn.cli", "info"], check=True,
                          capture_output=True, text=True).stdout
    for kind in ("batch", "unit"):
        line = next(l for l in info.splitlines() if f"cells compiled ({kind} split)" in l)
        assert "rnn_relu float64" in line, line
    bad = subprocess.run([sys.executable, "-m", "fastrnn.cli", "compile", "--cells",
                          "lstm,elman"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--cells: expected names from" in bad.stderr
    assert "got elman" in bad.stderr
