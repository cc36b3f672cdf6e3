#!/usr/bin/env bash
# Creates a private virtual environment the benchmark uses to run an Infinity baseline (michaelfeil/infinity).
# It lives apart from embedserve's venv because infinity-emb pins its own versions of transformers, fastapi, etc.
#
# usage: benchmarks/setup_infinity.sh [torch|optimum|openvino] [VENV_DIR]
#   torch     (default) infinity-emb with its torch engine, as in the earlier runs: benchmarks/.infinity-venv
#   optimum   its optimum engine on ONNX Runtime (CPU provider): benchmarks/.infinity-optimum-venv
#   openvino  the same engine on onnxruntime-openvino (ORT's OpenVINO provider): benchmarks/.infinity-openvino-venv
# The flavor may also come from INFINITY_FLAVOR.
#   TORCH_SPEC       torch requirement to install first (default torch==2.13.0, the CPU wheel on this project's
#                    machines)
#   TORCH_INDEX_URL  index to take torch from, e.g. https://download.pytorch.org/whl/cu126 for a CUDA build
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
flavor="${INFINITY_FLAVOR:-torch}"
case "${1:-}" in
    torch | optimum | openvino) flavor="$1"; shift ;;
esac
case "$flavor" in
    torch) default_venv="$here/.infinity-venv" ;;
    optimum) default_venv="$here/.infinity-optimum-venv" ;;
    openvino) default_venv="$here/.infinity-openvino-venv" ;;
    *) echo "unknown flavor $flavor (torch, optimum or openvino)" >&2; exit 2 ;;
esac
venv="${1:-$default_venv}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet)
"${pip[@]}" --upgrade pip
# torch must come first: left to infinity-emb's resolver, `torch` could pull a different (multi-GB CUDA) build.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" --index-url "$TORCH_INDEX_URL" "$torch_spec"
else
    "${pip[@]}" "$torch_spec"
fi
if [ "$flavor" = torch ]; then
    "${pip[@]}" "infinity-emb[server,torch]==0.0.78"
else
    # The optimum engine needs optimum 1.x, whose bettertransformer import breaks with transformers >= 4.49, and the
    # versions of numpy, pyarrow, datasets and pandas that optimum 1.24 was built against.
    pins=("transformers==4.48.3" "numpy<2" "pyarrow<21" "datasets<4" "pandas<3")
    "${pip[@]}" "infinity-emb[server,torch]==0.0.78" "optimum[onnxruntime]==1.24.0" "${pins[@]}"
    if [ "$flavor" = openvino ]; then
        # Same engine, ORT's OpenVINO execution provider instead of the CPU one: both wheels provide the
        # `onnxruntime` module, so the plain one goes first.
        "$venv/bin/python" -m pip uninstall --quiet --yes onnxruntime
        "${pip[@]}" "onnxruntime-openvino==1.24.1" "${pins[@]}"
    fi
    "$venv/bin/python" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
fi
"$venv/bin/infinity_emb" --help >/dev/null
echo "infinity ($flavor) ready: $venv/bin/infinity_emb"
