#!/usr/bin/env bash
# Everything a lent GPU should measure, as one script (issue 20): a session has 15 minutes of
# device time in all, start-up included, so it is prepared here and run there once.
#
# On the CPU machine, from the project root:
#   ../shared/tools/gpu-prepare.sh          # .site/ (packages the GPU image lacks), .gpu-data/ (the sample)
# then the device tool's run, carry [".site", ".gpu-data"], timeout_s 420 (leaves room for a second
# run in the 15 minutes; the steps' own limits add up to more: whatever a cut run had written under
# $OUT still comes back, and steps.txt says how far it got):
#   export PYTHONPATH=$PWD/.site:$PWD PYTHONUNBUFFERED=1; bash bench/gpu_session.sh
#
# Steps, each under its own time limit, each logged to $OUT/<step>.log; a failing step does not
# stop the others, and $OUT/steps.txt lists every step's exit code and seconds:
#   machine      GPU, driver, torch/torchvision versions, CPU cores
#   tests        the CUDA tests (engine on CUDA vs CPU, reference adapter on CUDA, device decode)
#   throughput   bench/bench_gpu.py (DeiT-Ti/S/B bf16 vs the bare forward) -> $OUT/gpu.md
#   decode       bench/bench_decode.py --device cuda: nvjpeg + CUDA resize and the CUDA JPEG round
#                trip against PIL, on the 1000 sample JPEGs -> $OUT/decode_cuda.md
#   corruptions  bench/bench_corruptions.py --device cuda (engine alone) -> $OUT/corruptions_cuda.md
# Copy what came back into results/bench/ (gpu.md as is; the others into decode.md /
# corruptions.md) and docs/gpu_pipeline.md, with the command, and never a number that is not there.
#
# --smoke: the same steps at toy sizes on the CPU (device cpu), to check the script here.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
: > "$OUT/steps.txt"
DEVICE=cuda
if [ "${1:-}" = "--smoke" ]; then DEVICE=cpu; fi
PY=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, log it, record its exit code
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc, $(( $(date +%s) - start )) s (limit $limit s)" | tee -a "$OUT/steps.txt"
}

step machine 60 "$PY" -c '
import os, platform, torch, torchvision
print("torch", torch.__version__, "cuda", torch.version.cuda, "torchvision", torchvision.__version__)
print("python", platform.python_version(), "cpu cores", os.cpu_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", "capability", f"{p.major}.{p.minor}")
else:
    print("gpu: none visible")
'
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

if "$PY" -c 'import pytest' 2>/dev/null; then
    step tests 120 "$PY" -m pytest -q -p no:cacheprovider -W ignore::UserWarning \
        tests/test_corruption_engine.py::test_cuda_matches_cpu tests/test_reference_corruptions.py::test_cuda_device \
        tests/test_device_decode.py
else
    echo "tests: skipped, pytest is not installed on this machine" | tee -a "$OUT/steps.txt"
fi

if [ "$DEVICE" = cuda ]; then
    # DeiT-B first: its rows are the issue's targets, and rows past --budget-s are skipped
    step throughput 240 "$PY" bench/bench_gpu.py --budget-s 180 --out "$OUT/gpu.md" \
        --models deit_base_patch16_224 deit_tiny_patch16_224 deit_small_patch16_224
    step decode 120 "$PY" bench/bench_decode.py --device cuda --n 1000 --out "$OUT/decode_cuda.md"
    step corruptions 90 "$PY" bench/bench_corruptions.py --device cuda --batch 64 --repeats 3 --skip-reference \
        --out "$OUT/corruptions_cuda.md"
else
    step throughput 240 "$PY" bench/bench_gpu.py --device cpu --smoke --out "$OUT/gpu.md"
    step decode 120 "$PY" bench/bench_decode.py --device cpu --n 8 --out "$OUT/decode_cuda.md"
    step corruptions 90 "$PY" bench/bench_corruptions.py --device cpu --size 32 --batch 2 --repeats 1 \
        --skip-reference --out "$OUT/corruptions_cuda.md"
fi
! grep -q ": exit [1-9]" "$OUT/steps.txt"  # exit 1 when a step failed or ran out of time
