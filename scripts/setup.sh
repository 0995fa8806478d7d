#!/usr/bin/env bash
# Create .venv and install vaeflow into it (idempotent; a few seconds when
# nothing changed). Torch goes in first and pinned, so a CPU machine gets the
# CPU build instead of a multi-GB CUDA one: set TORCH_SPEC to choose another
# (for example TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=.venv/.vaeflow-installed
want="$(cat pyproject.toml) $torch_spec"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # shellcheck disable=SC2086  # TORCH_SPEC may carry pip options
    .venv/bin/python -m pip install -q $torch_spec
  fi
  .venv/bin/python -m pip install -q -e ".[export,dev]"
  printf '%s' "$want" > "$stamp"
fi
.venv/bin/python scripts/tensorrt_stubs.py  # TensorRT's type stubs for mypy (idempotent)
