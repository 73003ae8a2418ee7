#!/usr/bin/env bash
# Set up (idempotent) and run the offline CPU test suite, then the vLLM lane (scripts/test_vllm.sh, its own
# environment). ZRL_SKIP_VLLM=1 runs the main suite alone. Arguments go to the main suite's pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest -q "$@"
if [ "${ZRL_SKIP_VLLM:-0}" != 1 ]; then
  bash scripts/test_vllm.sh
fi
