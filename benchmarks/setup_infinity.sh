#!/usr/bin/env bash
# Creates the private virtual environment the benchmark uses to run the Infinity baseline (michaelfeil/infinity).
# It lives apart from embedserve's venv because infinity-emb pins its own versions of transformers, fastapi, etc.
#
# usage: benchmarks/setup_infinity.sh [VENV_DIR]   (default: benchmarks/.infinity-venv)
#   TORCH_SPEC       torch requirement to install first (default torch==2.13.0, the CPU wheel on this project's
#                    machines)
#   TORCH_INDEX_URL  index to take torch from, e.g. https://download.pytorch.org/whl/cu126 for a CUDA build
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/.infinity-venv}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch must come first: left to infinity-emb's resolver, `torch` could pull a different (multi-GB CUDA) build.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$venv/bin/pip" install --quiet --index-url "$TORCH_INDEX_URL" "$torch_spec"
else
    "$venv/bin/pip" install --quiet "$torch_spec"
fi
"$venv/bin/pip" install --quiet "infinity-emb[server,torch]==0.0.78"
"$venv/bin/infinity_emb" --help >/dev/null
echo "infinity ready: $venv/bin/infinity_emb"
