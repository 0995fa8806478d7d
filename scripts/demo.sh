#!/usr/bin/env bash
# The main job end to end on the embedded digits: train a Glow, evaluate it,
# write a sample grid, export verified ONNX engines, then sample, score and
# benchmark them with the torch-free runtime. OUT (default runs/demo) holds
# everything it makes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${OUT:-runs/demo}
.venv/bin/gentrain fit glow --out "$out" --overwrite
.venv/bin/gentrain eval "$out/checkpoint.pt"
.venv/bin/gentrain sample "$out/checkpoint.pt" --n 64 --temperature 0.7 --out "$out/samples-t0.7.png"
.venv/bin/genexport onnx "$out/checkpoint.pt" --name demo  # demo.ROLE.onnx whatever OUT is
# Serve them without PyTorch: sample a grid, score the test digits, time the engine.
.venv/bin/genrun sample --engine "$out/demo.generate.onnx" --n 64 --temperature 0.7 --out "$out/genrun-samples.png"
.venv/bin/genrun likelihood --engine "$out/demo.density.onnx" --data digits --out "$out/scores.csv"
.venv/bin/genrun bench --engine "$out/demo.generate.onnx" --batch 1,64,256 --seconds 2
