#!/usr/bin/env bash
# One command on a GPU machine: install, check the gpu backend's correctness, then time the
# GPU suite against cuDNN. Correctness comes first: a failure stops the run before any
# timing, with a summary of what failed. Everything lands in $OUT (or ./gpu-run):
#   info.txt, tests.txt, examples.txt, bench.txt, gpu.json, gpu.md, summary.txt
# Budget: about 8 minutes on an H100/H200 (the step limits below add up to 7.5).
set -uo pipefail
out=${OUT:-gpu-run}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
summary="$out/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
stop() { say "STOPPED: $*"; say "see $out/ for the logs"; exit 1; }

python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -2
{ fastrnn info; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv; } \
    > "$out/info.txt" 2>&1
say "machine: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
python3 -c "import fastrnn, sys; r = fastrnn.backends()['gpu']; \
print('gpu backend:', 'available' if r['available'] else r['reason']); \
sys.exit(0 if r['available'] else 1)" | tee -a "$summary" || stop "the gpu backend is not available"

# 1. Correctness (about 4 minutes at most): the backend-parametrised suite, PyTorch parity on
#    the GPU path, the layers, the PyTorch bridge on CUDA tensors, the CPU emulation of the
#    same kernels (a disagreement between the two points at the launch, not the logic).
timeout 240 python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_backends.py tests/test_torch_parity.py tests/test_layers.py \
    tests/test_torch_bridge.py -k "gpu or cuda or to_moves" > "$out/tests.txt" 2>&1
rc=$?
tail -3 "$out/tests.txt" | tee -a "$summary"
[ $rc -eq 0 ] || stop "GPU tests failed (exit $rc; 124 = over the time limit)"

# 2. The examples on the gpu backend (about 1 minute at most).
for ex in quickstart forecast_sunspots classify_digits char_lm; do
    flag=--smoke; [ $ex = quickstart ] && flag=""
    timeout 60 python3 "examples/$ex.py" --backend gpu $flag >> "$out/examples.txt" 2>&1 \
        || stop "examples/$ex.py --backend gpu failed (see examples.txt)"
done
say "examples: all ran on the gpu backend"

# 3. Timing (about 2.5 minutes at most): G1-G8 against cuDNN (TF32 off), CUDA events, the
#    NumPy reference timed once a round; every contender's results are checked first.
timeout 150 fastrnn bench --suite gpu --rounds 3 --reps 5 --reference-reps 1 \
    --json "$out/gpu.json" --markdown "$out/gpu.md" > "$out/bench.txt" 2>&1
rc=$?
tail -40 "$out/bench.txt" >> "$summary"
[ $rc -eq 0 ] || stop "fastrnn bench --suite gpu failed (exit $rc; 124 = over the time limit)"
say "done: gpu.json and gpu.md hold G1-G8"
