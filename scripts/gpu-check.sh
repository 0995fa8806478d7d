#!/usr/bin/env bash
# The one command for a GPU machine: the `gpu` tests and the GPU benchmark,
# then a summary. Under 8 minutes on one GPU (each step has its own timeout).
#
#   bash scripts/gpu-check.sh            # logs under $OUT (default runs/gpu-check)
#
# onnxruntime-gpu without a registry: put its wheel, split into parts
# (split -b 60M onnxruntime_gpu-....whl .whl/onnxruntime_gpu-....whl.part-),
# under .whl/; the parts are joined and the wheel installed in place of the
# CPU onnxruntime (same import name; --no-deps: its dependencies are the CPU
# build's). TensorRT plans need `tensorrt` and cuda-python installed; without
# them their tests skip and their benchmark rows say "not installed".
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${OUT:-runs/gpu-check}
modes=${MODES:-default,reduce-overhead}  # the full benchmark also tries max-autotune
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

shopt -s nullglob
parts=(.whl/*.whl.part-*)
if [ ${#parts[@]} -gt 0 ]; then
  wheel=".whl/$(basename "${parts[0]%.part-*}")"
  cat $(printf '%s\n' "${parts[@]}" | sort) > "$wheel"
  if "$python" -m pip uninstall -y -q onnxruntime >"$out/setup.log" 2>&1 \
    && "$python" -m pip install -q --no-deps --no-index "$wheel" >>"$out/setup.log" 2>&1; then
    echo "installed $(basename "$wheel")"
  else
    echo "could not install $(basename "$wheel"); see $out/setup.log"
  fi
fi

"$python" - <<'PY' | tee "$out/environment.txt"
import importlib.metadata as md
for name in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "cuda-python",
             "cuda-bindings", "polygraphy", "onnx", "onnxscript", "typer", "pytest"):
    try:
        print(f"{name:16} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name:16} not installed")
import onnxruntime, torch
print("ORT providers   ", onnxruntime.get_available_providers())
print("CUDA device     ", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
PY

started=$SECONDS
timeout 180 "$python" -m pytest tests/test_gpu.py -m gpu -rs -q -p no:cacheprovider \
  >"$out/gpu-tests.log" 2>&1
tests_rc=$?
timeout 290 "$python" benchmarks/throughput_gpu.py --seconds 0.5 --modes "$modes" \
  >"$out/benchmark.log" 2>&1
bench_rc=$?

echo
echo "== summary ($((SECONDS - started)) s) =="
echo "gpu tests (exit $tests_rc): $(tail -n 1 "$out/gpu-tests.log")"
grep -E "^SKIPPED" "$out/gpu-tests.log" | sed 's/^/  /'
echo "benchmark (exit $bench_rc): $([ $bench_rc -eq 0 ] && echo "benchmarks/results/throughput-gpu.md written" || tail -n 1 "$out/benchmark.log")"
sed -n '/^Targets:/,$p' "$out/benchmark.log" | sed 's/^/  /'
[ $tests_rc -eq 0 ] && [ $bench_rc -eq 0 ]
