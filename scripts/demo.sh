#!/usr/bin/env bash
# The main job end to end on the embedded digits: train a Glow, evaluate it,
# write a sample grid, export verified ONNX engines. OUT (default runs/demo)
# holds everything it makes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${OUT:-runs/demo}
.venv/bin/gentrain fit glow --out "$out" --overwrite
.venv/bin/gentrain eval "$out/checkpoint.pt"
.venv/bin/gentrain sample "$out/checkpoint.pt" --n 64 --temperature 0.7 --out "$out/samples-t0.7.png"
.venv/bin/genexport onnx "$out/checkpoint.pt"
