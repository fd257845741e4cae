"""Cold start: how long a new process waits for its first result.

Each case runs in a fresh process against an empty kernel cache (``NUMBA_CACHE_DIR`` a new
folder), then once more in a second fresh process against the cache the first one left
(warm: a machine where the kernels were compiled before, or ``fastrnn compile`` ran). A
case is one layer, ``[T=50, B, I=64] -> H=128``: the first inference call (eval mode) or the
first training step (forward and backward), per cell, dtype and batch. Also ``import
fastrnn`` alone, and ``fastrnn bench --quick`` cold and warm.

    python benchmarks/cold_start.py [--cells lstm,gru,rnn_tanh] [--json F] [--bench]

Timing in a child process: wall clock around the call, after the imports; the child prints
a checksum of the result, which must be the same cold and warm (a first call compiles, it
does not compute differently).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

_CASE = r"""
import sys, time
t0 = time.perf_counter()
import numpy as np
import fastrnn
t1 = time.perf_counter()
cell, dtype, B, mode = sys.argv[1], np.dtype(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
kind = {"rnn_tanh": fastrnn.RNN, "lstm": fastrnn.LSTM, "gru": fastrnn.GRU}
layer = kind[cell](64, 128, dtype=dtype, seed=0)
x = np.random.default_rng(0).standard_normal((50, B, 64)).astype(dtype)
if mode == "infer":
    layer.eval()
t2 = time.perf_counter()
y, _ = layer(x)
if mode == "train":
    layer.backward(np.ones_like(y))
t3 = time.perf_counter()
print(t1 - t0, t3 - t2, float(np.abs(y).sum()))
"""


def _child(args, cache):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", _CASE, *map(str, args)], env=env,
                         capture_output=True, text=True, check=True)
    imp, first, check = out.stdout.split()
    return float(imp), float(first), check


def case(cell, dtype, B, mode):
    """Cold and warm first-call seconds of one case (each in its own process)."""
    with tempfile.TemporaryDirectory() as cache:
        imp, cold, a = _child((cell, dtype, B, mode), cache)
        _, warm, b = _child((cell, dtype, B, mode), cache)
    if a != b:
        raise SystemExit(f"{cell} {dtype} B={B} {mode}: the cold call gave {a}, the warm "
                         f"one {b}: a first call must give the warm call's numbers")
    return {"cell": cell, "dtype": dtype, "batch": B, "mode": mode, "import_s": imp,
            "cold_s": cold, "warm_s": warm}


def bench_quick():
    """``fastrnn bench --quick --rounds 1 --reps 1`` (peers included) against an empty cache,
    then warm."""
    times = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for _ in range(2):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "fastrnn.cli", "bench", "--quick",
                            "--rounds", "1", "--reps", "1"], env=env,
                           check=True, capture_output=True)
            times.append(time.perf_counter() - start)
    return {"cold_s": times[0], "warm_s": times[1]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="lstm,gru,rnn_tanh")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--bench", action="store_true",
                        help="also time `fastrnn bench --quick` cold and warm")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    rows = []
    print(f"{'cell':9s} {'dtype':8s} {'B':>3s} {'mode':6s} {'import':>7s} {'cold':>7s} "
          f"{'warm':>7s}")
    for cell in args.cells.split(","):
        for dtype in args.dtypes.split(","):
            for B in map(int, args.batches.split(",")):
                for mode in ("infer", "train"):
                    r = case(cell, dtype, B, mode)
                    rows.append(r)
                    print(f"{cell:9s} {dtype:8s} {B:3d} {mode:6s} {r['import_s']:6.2f}s "
                          f"{r['cold_s']:6.2f}s {r['warm_s']:6.2f}s", flush=True)
    result = {"cases": rows}
    if args.bench:
        result["bench_quick"] = bench_quick()
        q = result["bench_quick"]
        print(f"fastrnn bench --quick --rounds 1 --reps 1: cold {q['cold_s']:.0f} s, "
              f"warm {q['warm_s']:.0f} s ({q['cold_s'] / q['warm_s']:.1f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
