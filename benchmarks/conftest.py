"""pytest-benchmark over fastrnn.bench's suites: ``pytest benchmarks/ --benchmark-json=F``.

Unlike ``fastrnn bench`` (one worker process per contender), these run in-process, one
contender after another, so a peer's idle threads may tax the next contender; use
``fastrnn bench`` for the numbers in BENCHMARKS.md. ``FASTRNN_BENCH_QUICK=1`` runs the
``--quick`` subset of configurations (full shapes).

As in ``fastrnn bench``, a contender is timed only after its outputs (and, for training,
every gradient) agree with the NumPy reference's on the same weights and inputs; a
disagreement fails the benchmark.
"""

import dataclasses
import os

import pytest

import fastrnn
from fastrnn import bench
from fastrnn._bench_worker import build_contender

QUICK = os.environ.get("FASTRNN_BENCH_QUICK") == "1"
_reference_outputs = {}  # configuration name -> the reference's outputs


def configs(suite):
    return bench.select(suite, quick=QUICK)


def contender_params(suite):
    out = []
    for name in ["fastrnn-numpy", "fastrnn-cpu", "fastrnn-gpu", "torch-cpu", "torch-cudnn",
                 "onnxruntime", "openvino"]:
        reason = None
        if name in bench.INFERENCE_ENGINES:
            if suite != "cpu":
                reason = "not a gpu contender"
            elif not (bench._has("onnx") and bench._has(name)):
                reason = f"onnx or {name} is not installed"
        elif name.startswith("fastrnn-"):
            rep = fastrnn.backends()[name.split("-", 1)[1]]
            if not rep["available"]:
                reason = rep["reason"]
            elif name != "fastrnn-numpy" and rep["array_module"] != (
                    "cupy" if suite == "gpu" else "numpy"):
                reason = f"not a {suite} contender"
        else:
            try:
                import torch
                if name == "torch-cudnn" and not torch.cuda.is_available():
                    reason = "no CUDA device for PyTorch"
                if (name == "torch-cpu") != (suite == "cpu"):
                    reason = f"not a {suite} contender"
            except ImportError:
                reason = "PyTorch is not installed"
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def run_benchmark(benchmark, suite, config, name):
    if not bench.applies(name, config):
        pytest.skip(f"{name} does not run {config.name} (PyTorch has no sigmoid RNN; ONNX "
                    "Runtime runs inference only)")
    weights = bench._weights(config)
    run, outputs, sync = build_contender(name, dataclasses.asdict(config), weights,
                                   os.cpu_count())
    run()  # compilation and first-touch costs stay out of the timed calls
    sync()
    check_against_reference(config, name, weights, outputs())
    benchmark.group = f"{suite}:{config.name}"
    benchmark.extra_info.update(flops=config.flops(), **dataclasses.asdict(config))

    def timed():
        run()
        sync()  # a GPU contender is synchronised inside the timed region

    rounds = 1 if name == "fastrnn-numpy" and not QUICK else 3
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)


def check_against_reference(config, name, weights, got):
    """Raise :class:`fastrnn.bench.BenchmarkError` unless ``got`` (a contender's outputs)
    agrees with the NumPy reference's on ``config``."""
    if config.name not in _reference_outputs:
        if name == bench.REFERENCE:
            _reference_outputs[config.name] = got
            return
        run, outputs, _ = build_contender(bench.REFERENCE, dataclasses.asdict(config),
                                          weights, os.cpu_count())
        run()
        _reference_outputs[config.name] = outputs()
    bench.check_agreement(config, {bench.REFERENCE: _reference_outputs[config.name],
                                   name: got})
