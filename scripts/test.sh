#!/usr/bin/env bash
# Lint, type-check and run the whole test suite (after scripts/setup.sh). Fails on "no tests".
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate
export OMP_NUM_THREADS=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 TOKENIZERS_PARALLELISM=false
ruff check .
ruff format --check .
mypy
python -m pytest -q "$@"
