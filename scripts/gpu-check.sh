#!/usr/bin/env bash
# The one GPU check: what a lent GPU machine runs, in under 6 minutes, with
# only this repository (the embedded digits, tiny models trained in seconds).
#
#   OUT=DIR bash scripts/gpu-check.sh            # on the GPU machine (default OUT=runs/gpu-check)
#   OUT=DIR bash scripts/gpu-check.sh --dry-run  # on a CPU, against tests/fake_gpu.py (CI runs it)
#
# Stages, in order of value, each with its own timeout (they add up to 345 s)
# and each writing OUT/N-STAGE.txt as it finishes, so a timeout loses only the
# stage that ran out (scripts/gpu_check.py has them):
#   0 wheels      onnxruntime-gpu from the parts scripts/gpu-wheels.sh left in
#                 .gpu-wheels/ (joined, checked, installed without an index)
#   1 truth       driver and runtime versions, the providers that actually run
#                 (a torch-free process)
#   2 train       gentrain fit glow --device cuda (300 steps) and gentrain eval,
#                 and a small VAE
#   3 parity      every role in ONNX Runtime CUDA (TF32 off) against the CPU,
#                 TensorRT plans fp32 and fp16 where TensorRT is installed
#   4 graphs      CUDA graphs: batches 8, 4, 8, 4, 32 equal to a plain runner
#   5 throughput  benchmarks/throughput_gpu.py's table
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${OUT:-runs/gpu-check}
dry=()
# The limits below are for a lent GPU machine. A dry run stands a shared CPU in
# for the GPU (CI runs it beside other tests), so its limits are scaled:
# GPU_CHECK_TIME_SCALE (default 4 in a dry run, 1 otherwise).
scale=${GPU_CHECK_TIME_SCALE:-1}
if [ "${1:-}" = "--dry-run" ]; then dry=(--dry-run); scale=${GPU_CHECK_TIME_SCALE:-4}; fi
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
summary="$out/summary.txt"
: > "$summary"

stage() {  # stage NAME SECONDS COMMAND...: run with a timeout, log, one summary line
  local name=$1 limit=$(($2 * scale)) started=$SECONDS rc
  shift 2
  timeout --kill-after=5 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  local verdict="ok"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="TIMED OUT"
  [ $rc -ne 0 ] && [ "$verdict" = "ok" ] && verdict="failed (exit $rc)"
  echo "$name: $verdict in $((SECONDS - started)) s (limit $limit s); log $out/$name.log" \
    | tee -a "$summary"
}

wheels() {  # join and install onnxruntime-gpu where gpu-wheels.sh's parts are complete
  if [ ! -f .gpu-wheels/SHA256SUMS ]; then
    echo "no .gpu-wheels/SHA256SUMS: onnxruntime-gpu not installed (run scripts/gpu-wheels.sh)"
    return 0
  fi
  bash scripts/gpu-wheels.sh --join || return 1
  "$python" -m pip uninstall -y -q onnxruntime 2>/dev/null
  "$python" -m pip install -q --no-index --find-links .gpu-wheels/joined \
    onnxruntime-gpu $(cat .gpu-wheels/EXTRA 2>/dev/null)
}

if [ ${#dry[@]} -eq 0 ]; then
  stage 0-wheels 45 wheels
else
  echo "0-wheels: skipped in a dry run" | tee -a "$summary"
fi
stage 1-truth 30 "$python" scripts/gpu_check.py truth --out "$out" "${dry[@]}"
stage 2-train 75 "$python" scripts/gpu_check.py train --out "$out" "${dry[@]}"
stage 3-parity 75 "$python" scripts/gpu_check.py parity --out "$out" "${dry[@]}"
stage 4-graphs 30 "$python" scripts/gpu_check.py graphs --out "$out" "${dry[@]}"
stage 5-throughput 90 "$python" scripts/gpu_check.py throughput --out "$out" "${dry[@]}"
! grep -qv ": ok in\|skipped" "$summary"
