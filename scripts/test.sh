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
# The documentation site: any warning (broken link or anchor, undocumented config field) fails.
# Not -q: at that log level MkDocs drops the warnings that strict mode counts.
site_dir="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --site-dir "$site_dir"
rm -rf "$site_dir"
python -m pytest -q "$@"
