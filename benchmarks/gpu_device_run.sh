#!/usr/bin/env bash
# One device call that builds, checks and times the gpu backend (issue 6):
#   run(command="bash benchmarks/gpu_device_run.sh", timeout_s=600)
# Writes logs, the benchmark JSON and markdown to $OUT (or ./gpu-run when unset).
set -uo pipefail
out=${OUT:-gpu-run}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -2
fastrnn info | tee "$out/info.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv | tee -a "$out/info.txt"
# Correctness first: the backend-parametrised suite and PyTorch parity on the GPU path.
python3 -m pytest -q -x tests/test_backends.py tests/test_torch_parity.py tests/test_layers.py \
    -k "gpu or to_moves" 2>&1 | tee "$out/tests.txt" | tail -15
# Then the GPU suite against cuDNN (TF32 off), CUDA-event timing, the reference timed once.
fastrnn bench --suite gpu --rounds 5 --reps 5 --reference-reps 1 \
    --json "$out/gpu.json" --markdown "$out/gpu.md" 2>&1 | tee "$out/bench.txt" | tail -30
