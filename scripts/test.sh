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
# Fast tests run in a new random order each time (pytest-randomly; tests marked slow or vllm keep
# file order at the end, see tests/conftest.py); replay an order with FORGE_TEST_SEED=N.
seed=${FORGE_TEST_SEED:-$RANDOM}
echo "test order seed: $seed (replay: FORGE_TEST_SEED=$seed bash scripts/test.sh)"
# Two workers (pytest-xdist; FORGE_TEST_WORKERS=N to change, 0 for none), each test file on one
# worker so its module fixtures (gateways, engines) start once.
workers=${FORGE_TEST_WORKERS:-2}
parallel=()
if [ "$workers" != 0 ]; then parallel=(-n "$workers" --dist loadfile); fi
python -m pytest -q -p randomly --randomly-seed="$seed" "${parallel[@]}" --durations=20 "$@"
