#!/usr/bin/env bash
# onnxruntime-gpu (and the packages vaeflow needs beside it) for a GPU machine
# that has no package index: Python 3.12, PyTorch with CUDA 13 (which brings
# the CUDA and cuDNN wheels onnxruntime-gpu loads), cuda-bindings and cupy.
#
#   bash scripts/gpu-wheels.sh          # here, with an index: download the cp312 wheels
#                                       # into .gpu-wheels/ (git-ignored) and split every
#                                       # file over 60 MiB into parts under 64 MiB
#   bash scripts/gpu-wheels.sh --join   # there: join the parts, check every sha256
#                                       # (scripts/gpu-check.sh's stage 0 runs this and
#                                       # installs them with pip --no-index)
#
# Layout: .gpu-wheels/parts/ the split wheels (WHEEL.part-aa, -ab, ...),
# .gpu-wheels/small/ wheels under 60 MiB as they are, .gpu-wheels/SHA256SUMS
# of every whole wheel, .gpu-wheels/EXTRA the packages to install beside
# onnxruntime-gpu. Joining by hand: cat .gpu-wheels/parts/W.part-* > W; sha256sum -c.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
dir=.gpu-wheels
ort=${ORT_GPU:-onnxruntime-gpu==1.31.1}  # a CUDA 13 build (its [cuda] extra names CUDA 13 wheels)
extra="typer pillow onnx onnxscript"       # genrun's CLI, genexport's graphs

if [ "${1:-}" = "--join" ]; then
  mkdir -p "$dir/joined"
  shopt -s nullglob
  for first in "$dir"/parts/*.part-aa; do
    wheel=$(basename "${first%.part-aa}")
    cat "$dir/parts/$wheel".part-* > "$dir/joined/$wheel"
  done
  for wheel in "$dir"/small/*.whl; do cp "$wheel" "$dir/joined/"; done
  (cd "$dir/joined" && sha256sum --quiet -c ../SHA256SUMS)
  echo "joined $(ls "$dir/joined" | wc -l) wheels into $dir/joined"
  exit 0
fi

rm -rf "$dir"
mkdir -p "$dir/download" "$dir/parts" "$dir/small"
"$python" -m pip download -q --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any \
  -d "$dir/download" "$ort" $extra
(cd "$dir/download" && sha256sum ./*.whl | sed 's#\./##') > "$dir/SHA256SUMS"
echo "$extra" > "$dir/EXTRA"
for wheel in "$dir"/download/*.whl; do
  name=$(basename "$wheel")
  if [ "$(stat -c %s "$wheel")" -gt $((60 << 20)) ]; then
    split -b 60M "$wheel" "$dir/parts/$name.part-"
  else
    mv "$wheel" "$dir/small/"
  fi
done
rm -rf "$dir/download"
du -sh "$dir"/parts/* "$dir/small" | sed 's/^/  /'
echo "carry to the GPU machine: $dir (each part under 64 MiB; one or more per call)"
