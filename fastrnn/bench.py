"""The standard benchmark suites, as data, and the runner behind ``fastrnn bench``.

For each configuration the runner builds one set of weights, has every contender compute the
same outputs (and, for training, the same gradients) and checks them against the NumPy
reference before timing anything; then it times the contenders interleaved, each in its own
worker process so that one's idle threads cannot tax another, and reports the median, min
and max, the speedup over the reference and over the peer, and the distance to the floor
(the configuration's FLOPs over the GEMM rate measured in the same run).
"""

import dataclasses
import os
import sys
import time

import numpy as np

from . import dispatch
from ._bench_worker import WorkerHandle, gemm_rate_worker
from .kernels.cells import get_cell


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmark configuration; shapes follow docs/architecture.md's legend."""

    name: str
    cell: str
    I: int
    H: int
    L: int
    D: int
    B: int
    T: int
    mode: str  # "train" (forward + backward) or "infer" (forward, training=False)
    # the cell class (LSTMCell, ...) called once a step in a Python loop - a decoder, a
    # generation loop, an agent - instead of the layer over the whole sequence
    loop: bool = False
    # a layer-normalised cell (layer_norm=True); torch-cpu is then an eager PyTorch loop of
    # the same equations, what PyTorch users write for it
    layer_norm: bool = False

    def flops(self):
        """Multiply-add FLOPs of the GEMM work: forward, and twice that again for backward
        (input and weight gradients of both the input and the recurrent products)."""
        G = get_cell(self.cell).gates
        fwd = 0
        for layer in range(self.L):
            in_size = self.I if layer == 0 else self.D * self.H
            fwd += self.D * 2 * self.T * self.B * G * self.H * (in_size + self.H)
        return fwd * (3 if self.mode == "train" else 1)


def _suite(rows):
    return {r[0]: Config(*r) for r in rows}


SUITES = {
    "cpu": _suite([
        ("C1", "lstm", 256, 256, 1, 1, 1, 150, "infer"),
        ("C2", "lstm", 256, 256, 1, 1, 16, 150, "train"),
        ("C3", "lstm", 512, 512, 1, 1, 64, 100, "train"),
        ("C4", "gru", 512, 512, 1, 1, 32, 100, "train"),
        ("C5", "rnn_tanh", 1024, 1024, 1, 1, 16, 50, "train"),
        ("C6", "lstm", 123, 320, 2, 2, 32, 100, "train"),
        ("C7", "lstm", 344, 32, 3, 1, 20, 1000, "train"),
        ("C8", "gru", 128, 128, 1, 1, 8, 500, "infer"),
        ("C2i", "lstm", 256, 256, 1, 1, 16, 150, "infer"),
        ("C4i", "gru", 512, 512, 1, 1, 32, 100, "infer"),
        ("C9", "lstm", 650, 650, 2, 1, 20, 35, "train"),  # the classic medium word-LM
        ("C10", "lstm", 512, 512, 1, 1, 32, 100, "train", False, True),  # LayerNorm LSTM
    ]),
    # cells called step by step; "train" is the loop's forward, then backward through it
    "cells": _suite([
        ("K1", "lstm", 51, 51, 1, 1, 97, 100, "train", True),  # two stacked in the example
        ("K2", "lstm", 256, 256, 1, 1, 1, 100, "train", True),
        ("K3", "lstm", 512, 512, 1, 1, 32, 20, "train", True),
        ("K4", "gru", 256, 256, 1, 1, 16, 100, "train", True),
        ("K5", "lstm", 256, 256, 1, 1, 1, 100, "infer", True),  # generation
        ("K6", "gru", 128, 128, 1, 1, 8, 100, "infer", True),
        ("K7", "rnn_tanh", 128, 128, 1, 1, 8, 100, "infer", True),
    ]),
    "gpu": _suite([
        ("G1", "lstm", 512, 512, 1, 1, 64, 100, "train"),
        ("G2", "lstm", 1024, 1024, 1, 1, 128, 25, "train"),
        ("G3", "lstm", 256, 256, 1, 1, 16, 150, "train"),
        ("G3i", "lstm", 256, 256, 1, 1, 1, 150, "infer"),
        ("G4", "gru", 1024, 1024, 1, 1, 32, 1500, "train"),
        ("G5", "gru", 2816, 2816, 1, 1, 4, 375, "infer"),
        ("G6", "rnn_relu", 1760, 1760, 1, 1, 16, 50, "train"),
        ("G7", "lstm", 344, 32, 3, 1, 20, 1314, "train"),
        ("G8", "lstm", 123, 320, 2, 2, 32, 1000, "train"),
    ]),
}
# ``--quick``: these configurations at their full shapes (ratios as in the full run, with
# fewer rounds): inference at batch 1 and 8, LSTM and vanilla-RNN training.
QUICK = {"cpu": ("C1", "C2", "C5", "C8"), "cells": ("K1", "K5"),
         "gpu": ("G1", "G3", "G3i", "G6")}
REFERENCE = "fastrnn-numpy"
# Agreement with the reference before timing: float32 sums over long sequences drift, so
# this checks wiring, not last-bit precision (the test suite does that).
CHECK_TOL = 5e-3


class BenchmarkError(RuntimeError):
    """A benchmark cannot start (bad arguments) or contenders disagree."""


def select(suite="cpu", only=None, quick=False):
    """The configurations of ``suite`` (all, those named in ``only``, or with ``quick`` and
    no ``only`` the :data:`QUICK` ones), in suite order."""
    if suite not in SUITES:
        raise BenchmarkError(f"--suite: expected one of {sorted(SUITES)}, got {suite!r}")
    configs = SUITES[suite]
    if not only and quick:
        only = QUICK[suite]
    if not only:
        return list(configs.values())
    unknown = [n for n in only if n not in configs]
    if unknown:
        raise BenchmarkError(f"--only: unknown configuration(s) {unknown} for suite "
                             f"{suite!r}; expected names from {list(configs)}")
    return [configs[n] for n in configs if n in only]


def contenders(suite="cpu", backends=None, peer=True):
    """Contender names for a suite: fastrnn backends (the reference always), and the peer.

    ``backends`` limits the fastrnn backends timed besides the reference; each must be
    available, or this raises with the reason.
    """
    report = dispatch.backends()
    xp = "cupy" if suite == "gpu" else "numpy"
    if backends:
        for name in backends:
            if name not in report:
                raise BenchmarkError(f"--backend: expected names from {sorted(report)}, "
                                     f"got {name!r}")
            if not report[name]["available"]:
                raise BenchmarkError(f"--backend {name}: not available: "
                                     f"{report[name]['reason']}")
            if report[name]["array_module"] != xp and name != "numpy":
                raise BenchmarkError(f"--backend {name}: runs on {report[name]['array_module']}"
                                     f" arrays, not on the {suite} suite")
        chosen = [b for b in backends if b != "numpy"]
    else:
        chosen = [n for n, r in report.items()
                  if r["available"] and r["array_module"] == xp and n != "numpy"]
    if suite == "gpu" and not chosen:
        raise BenchmarkError("--suite gpu: the gpu backend is not available here: "
                             f"{report['gpu']['reason']}")
    names = [REFERENCE] + [f"fastrnn-{b}" for b in chosen]
    if peer:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None and suite in ("cpu", "cells"):
            # fastrnn inside PyTorch (fastrnn.torch, autograd included) beside torch.nn
            names += (["fastrnn-torch"] if "cpu" in chosen else []) + ["torch-cpu"]
        elif torch is not None and suite == "gpu" and torch.cuda.is_available():
            names.append("torch-cudnn")
        if suite == "cpu" and _has("onnx") and _has("onnxruntime"):
            names.append("onnxruntime")  # (inference configurations only)
        if suite == "cpu" and _has("onnx") and _has("openvino"):
            names.append("openvino")  # (inference configurations only)
    if suite == "cpu" and "cpu" in chosen:  # quantized inference (after the float32 peers)
        names += list(LOW_PRECISION_FASTRNN)
    if peer and suite == "cpu":
        if _has("onnx") and _has("onnxruntime"):
            names.append("onnxruntime-int8")
        if _has("torch"):
            names.append("torch-int8")
    return names


def thread_counts(spec):
    """``--threads``: None (all cores), or a count or comma-separated counts, each a positive
    integer, as a list (``[None]`` for the default)."""
    if spec is None:
        return [None]
    counts = []
    for part in str(spec).split(","):
        try:
            n = int(part)
        except ValueError:
            n = 0
        if n < 1 or part.strip() != part or not part:
            raise BenchmarkError(f"--threads: expected a positive integer or a comma-separated "
                                 f"list of them (e.g. 1,2,4), got {spec!r}")
        counts.append(n)
    return counts


def _has(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None


# Contenders that only infer (they run the layer's ONNX export)
INFERENCE_ENGINES = ("onnxruntime", "openvino")
# Quantized inference (the inference configurations of whole layers): fastrnn's formats,
# ONNX Runtime's dynamic int8 quantization of the exported model (quantize_dynamic: its
# LSTM becomes DynamicQuantizeLSTM; GRU and RNN stay float32) and PyTorch's
# (torch.ao.quantization.quantize_dynamic, qint8 LSTM and GRU)
LOW_PRECISION_FASTRNN = {"fastrnn-cpu-int8": "int8", "fastrnn-cpu-bf16": "bfloat16"}
LOW_PRECISION_PEERS = ("onnxruntime-int8", "torch-int8")
# Agreement of a low-precision contender with the float32 reference (max abs difference
# over max abs output): fastrnn's against its accuracy targets (int8: with the margin
# tanh RNNs need, BENCHMARKS.md); the peers' only as a check of the wiring (ONNX
# Runtime's int8 LSTM also quantizes the activations to uint8: errors of 0.2-0.3)
LOW_PRECISION_TOL = {"fastrnn-cpu-int8": 1.5e-2, "fastrnn-cpu-bf16": 5e-3,
                     "onnxruntime-int8": 0.5, "torch-int8": 0.2}


def applies(name, config):
    """Whether contender ``name`` runs ``config``: PyTorch has no sigmoid RNN, ONNX Runtime
    and OpenVINO are inference engines of whole layers, quantized contenders infer whole
    layers (PyTorch's quantize_dynamic quantizes only LSTM and GRU)."""
    if name in ("torch-cpu", "fastrnn-torch") and config.cell == "rnn_sigmoid":
        return False
    if name == "fastrnn-torch" and config.layer_norm:
        return False  # (fastrnn.torch's layers have no layer_norm)
    if name in LOW_PRECISION_TOL:
        if config.mode == "train" or config.loop or config.layer_norm:
            return False
        return name != "torch-int8" or config.cell in ("lstm", "gru")
    return not (name in INFERENCE_ENGINES and (config.mode == "train" or config.loop))


def _rel_err(a, b):
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-30)
    return float(np.abs(a.astype(np.float64) - b).max(initial=0.0)) / scale


def check_agreement(config, results):
    """Compare every contender's outputs with the reference's (low-precision contenders
    within :data:`LOW_PRECISION_TOL`); raise on a disagreement. Returns each contender's
    largest relative error over the quantities compared."""
    want = results[REFERENCE]
    errors = {REFERENCE: 0.0}
    for name, got in results.items():
        if name == REFERENCE:
            continue
        tol = LOW_PRECISION_TOL.get(name, CHECK_TOL)
        errors[name] = 0.0
        for key, ref in want.items():
            if key not in got:
                continue  # e.g. a peer without the quantity
            err = _rel_err(got[key], ref)
            if not np.isfinite(err) or err > tol:
                raise BenchmarkError(
                    f"{config.name}: {name} disagrees with the NumPy reference on {key}: "
                    f"relative error {err:.3g} > {tol}; no timing was done")
            errors[name] = max(errors[name], err)
    return errors


def _progress(done, total, label, stream):
    """A bar redrawn in place on a terminal; a line per step in a file or a pipe."""
    width = 30
    filled = int(width * done / max(total, 1))
    tty = hasattr(stream, "isatty") and stream.isatty()
    bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
    stream.write(f"\r{bar}{label:<40}" if tty else f"{bar}{label}\n")
    stream.flush()


def run(configs, names, rounds=5, reps=3, reference_reps=1, threads=None, quick=False,
        stream=sys.stderr, gap_s=0.05):
    """Check and time every configuration; returns a list of result dicts.

    Each round gives every contender one turn of ``reps`` timed calls (the reference
    ``reference_reps``), in an order that rotates from round to round; ``gap_s`` of quiet
    between turns lets the last contender's threads go idle.
    """
    for option, value in (("--rounds", rounds), ("--reps", reps),
                          ("--reference-reps", reference_reps), ("--threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise BenchmarkError(f"{option}: expected a positive integer, got {value!r}")
    if quick:
        rounds, reps = min(rounds, 2), min(reps, 2)
    threads = threads or os.cpu_count()
    gpu = any(n in ("fastrnn-gpu", "torch-cudnn") for n in names)
    rate = gemm_rate_worker(gpu=gpu, threads=threads)
    results = []
    total = len(configs) * (1 + rounds)
    step = 0
    for config in configs:
        _progress(step, total, f"{config.name}: building and checking", stream)
        weights = _weights(config)
        workers = {}
        try:
            outs = {}
            for name in names:
                if not applies(name, config):
                    continue
                w = WorkerHandle(name, config, weights, threads)
                workers[name] = w
            for name, w in workers.items():
                outs[name] = w.wait_ready()
            errors = check_agreement(config, outs)
            step += 1
            times = {name: [] for name in workers}
            order = list(workers)
            for r in range(rounds):
                _progress(step, total, f"{config.name}: round {r + 1}/{rounds}", stream)
                for name in order[r % len(order):] + order[:r % len(order)]:
                    n = reference_reps if name == REFERENCE else reps
                    times[name] += workers[name].time(n)
                    time.sleep(gap_s)
                step += 1
        finally:
            for w in workers.values():
                w.close()
        results.append(_summarise(config, times, rate, threads, errors))
    _progress(total, total, "done", stream)
    if hasattr(stream, "isatty") and stream.isatty():
        stream.write("\n")
    return results


def _weights(config):
    if config.loop:
        from .cell_layers import GRUCell, LSTMCell, RNNCell
        kw = dict(seed=0, backend="numpy")
        if config.cell == "lstm":
            return LSTMCell(config.I, config.H, **kw).state_dict()
        if config.cell == "gru":
            return GRUCell(config.I, config.H, **kw).state_dict()
        return RNNCell(config.I, config.H, nonlinearity=config.cell.split("_")[1],
                       **kw).state_dict()
    from .layers import GRU, LSTM, RNN
    kw = dict(num_layers=config.L, bidirectional=config.D == 2, seed=0, backend="numpy",
              layer_norm=config.layer_norm)
    if config.cell == "lstm":
        layer = LSTM(config.I, config.H, **kw)
    elif config.cell == "gru":
        layer = GRU(config.I, config.H, **kw)
    else:
        layer = RNN(config.I, config.H, nonlinearity=config.cell.split("_")[1], **kw)
    weights = layer.state_dict()
    rng = np.random.default_rng(1)
    for name in weights:  # (gains away from their initial 1 and 0: a check that sees them)
        if name.startswith("ln_"):
            weights[name] = (weights[name] + rng.uniform(-0.2, 0.2, weights[name].shape)
                             ).astype(weights[name].dtype)
    return weights


def _summarise(config, times, rate, threads, errors=None):
    floor = config.flops() / rate["flops_per_s"]
    ref = float(np.median(times[REFERENCE])) if times.get(REFERENCE) else None
    peer_name = next((n for n in times if n in ("torch-cpu", "torch-cudnn")), None)
    peer = float(np.median(times[peer_name])) if peer_name else None
    rows = {}
    for name, ts in times.items():
        med = float(np.median(ts))
        rows[name] = {
            "median_s": med, "min_s": float(np.min(ts)), "max_s": float(np.max(ts)),
            "runs": len(ts),
            "speedup_vs_reference": ref / med if ref else None,
            "speedup_vs_peer": peer / med if peer else None,
            "times_floor": med / floor,
            "error": (errors or {}).get(name),
        }
    return {"config": dataclasses.asdict(config), "flops": config.flops(), "floor_s": floor,
            "gemm_rate": rate, "threads": threads, "peer": peer_name, "contenders": rows}
