#!/usr/bin/env bash
# The GPU proof, for a single-GPU machine with torch, transformers, peft and sentence-transformers installed
# (no download, no pip install, the project not installed: it runs from this working tree). Under 8 minutes:
#   1. pytest -m gpu on the test files that hold GPU tests (at most 180 s);
#   2. bench/gpu_check.py: fp16 vs fp32 embedding, exact search on the GPU vs FAISS on the CPU at
#      1M x 768, bf16 decode ms/token of a ChatGLM3-6B-sized model vs the bandwidth floor, and the peak
#      GPU memory of each (at most 270 s).
# Without CUDA it prints one line and exits 0. Run from the repository root: bash bench/gpu_check.sh
# (PYTHON=/path/to/python picks the interpreter; by default python3 on PATH).
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "no CUDA: $("$PYTHON" -c 'import torch; print("torch", torch.__version__, "sees no GPU")' 2>/dev/null \
        || echo "torch is not importable with $PYTHON"); nothing to check on this machine"
    exit 0
fi

started=$(date +%s)
"$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB")'

echo "=== pytest -m gpu"
# The tests import the project, which needs its own light dependencies besides the GPU stack.
missing=$("$PYTHON" -c 'import importlib.util as u; names = "pytest numpy pydantic pydantic_settings yaml jieba faiss fastapi sentence_transformers peft tokenizers"; print(" ".join(n for n in names.split() if u.find_spec(n) is None))' 2>/dev/null)
[ -n "$missing" ] && echo "not installed with $PYTHON (tests needing them fail or skip): $missing"
if "$PYTHON" -c 'import pytest' 2>/dev/null; then
    mapfile -t gpu_files < <(grep -rlE 'mark\.gpu|pytestmark = pytest\.mark\.gpu' tests --include='test_*.py' | sort)
    timeout 180 "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider --continue-on-collection-errors \
        "${gpu_files[@]}" 2>&1 | tail -n 40
    echo "(pytest exit status ${PIPESTATUS[0]}; 124 means it ran past 180 s)"
else
    echo "pytest is not installed with $PYTHON: skipped"
fi

echo "=== bench/gpu_check.py"
timeout 270 "$PYTHON" bench/gpu_check.py "$@"
echo "(gpu_check.py exit status $?; 124 means it ran past 270 s)"
echo "total: $(( $(date +%s) - started )) s"
