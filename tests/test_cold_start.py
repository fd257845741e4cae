"""What a new process pays before its first result: ``import fastrnn`` loads no compiler
and starts no thread, a call compiles the loops of its own kind and dtype and no others,
and ``fastrnn compile`` fills the cache ahead of time. (How long each takes is measured by
``benchmarks/cold_start.py``, not here.)"""

import re
import subprocess
import sys


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


def test_importing_the_cpu_backend_starts_nothing_until_its_first_call():
    """Importing the backend starts no thread pool and looks up no BLAS library; nor does a
    call of a few rows (one compiled call on the caller's thread); the first call big
    enough for threads starts Numba's pool with fastrnn's wait settings."""
    out = _run("import threading, numpy as np\n"
               "from fastrnn.kernels import cpu\n"
               "from fastrnn.kernels.contract import State, Weights\n"
               "from fastrnn.kernels.cpu import _blas, _jit\n"
               "def state():\n"
               "    print(threading.active_count(), _jit._started is None,"
               " _blas._found is _blas._UNKNOWN)\n"
               "def call(T, B, H):\n"
               "    f = lambda *s: np.full(s, 0.01, np.float32)\n"
               "    cpu.forward('rnn_tanh', f(T, B, H), State(f(B, H)),\n"
               "                Weights(f(H, H), f(H, H)), training=False)\n"
               "state()\n"
               "call(1, 2, 8)\n"
               "state()\n"
               "call(50, 64, 64)\n"
               "state()\n")
    before, few, big = (line.split() for line in out.splitlines())
    assert before == few == ["1", "True", "True"]
    assert big[1:] == ["False", "False"]


def test_a_call_compiles_its_own_loops_only():
    """A float32 training call of a batch of 160 compiles (or loads) the batch-split loops
    in float32: no float64 loop and no unit-split loop."""
    out = _run(
        "import numpy as np, fastrnn\n"
        "from fastrnn.kernels import cpu\n"
        "layer = fastrnn.GRU(8, 16, seed=0)\n"
        "x = np.random.default_rng(0).standard_normal((5, 160, 8)).astype(np.float32)\n"
        "y, _ = layer(x)\n"
        "layer.backward(np.ones_like(y))\n"
        "for f in (cpu.forward_loop, cpu.backward_loop, cpu.forward_loop_split,\n"
        "          cpu.backward_loop_split, cpu.forward_loop_serial, cpu.forward_rows):\n"
        "    print(f.__name__, *sorted({str(a.dtype) for s in f.signatures for a in s\n"
        "                               if str(getattr(a, 'dtype', '')).startswith('float')"
        "}))\n")
    got = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert got.pop("forward_loop") == ["float32"] and got.pop("backward_loop") == ["float32"]
    assert all(not dtypes for dtypes in got.values()), got


def test_fastrnn_compile_fills_the_cache_and_info_lists_it():
    """``fastrnn compile`` for one dtype, then ``fastrnn info`` lists every loop kind as
    compiled in it; a bad choice is an error that names it."""
    out = subprocess.run([sys.executable, "-m", "fastrnn.cli", "compile", "--dtypes",
                          "float64", "--jobs", "1"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1/1 float64" in out.stderr
    assert "compiled every loop kind in float64 in" in out.stdout
    info = subprocess.run([sys.executable, "-m", "fastrnn.cli", "info"], check=True,
                          capture_output=True, text=True).stdout
    line = next(l for l in info.splitlines() if "compiled loops (every cell)" in l)
    for loop in ("batch split", "unit split backward", "one thread", "a few rows"):
        assert re.search(loop + r" [a-z0-9, ]*float64", line), line
    bad = subprocess.run([sys.executable, "-m", "fastrnn.cli", "compile", "--dtypes",
                          "float32,float16"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--dtypes: expected names from" in bad.stderr
    assert "got float16" in bad.stderr
    both = subprocess.run([sys.executable, "-m", "fastrnn.cli", "compile", "--all",
                           "--dtypes", "float32"], capture_output=True, text=True)
    assert both.returncode != 0 and "give --all or --dtypes, not both" in both.stderr


def test_fastrnn_compile_fills_the_cache_for_quantized_layers():
    """``fastrnn compile --dtypes int8`` compiles the loops of ``fastrnn.quantize``'d
    int8 layers (the unit split and the batch split), and ``fastrnn info`` lists them."""
    out = subprocess.run([sys.executable, "-m", "fastrnn.cli", "compile", "--dtypes", "int8",
                          "--jobs", "1"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compiled every loop kind in int8 in" in out.stdout
    info = subprocess.run([sys.executable, "-m", "fastrnn.cli", "info"], check=True,
                          capture_output=True, text=True).stdout
    line = next(l for l in info.splitlines() if "compiled loops (every cell)" in l)
    for loop in ("batch split", "unit split", "one thread"):
        assert re.search(loop + r" [a-z0-9, ]*int8", line), line
    assert "quantized inference" in info
