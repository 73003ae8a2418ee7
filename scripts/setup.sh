#!/usr/bin/env bash
# Create .venv and install zrl, its plugins and the dev tools. Safe to re-run.
#   ZRL_TORCH: the torch requirement installed first (default: torch==2.13.0, the CPU build this project's machines
#   carry on disk). Set ZRL_TORCH=skip to keep whatever torch is already installed (e.g. a CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip 2>/dev/null || true
if [ "${ZRL_TORCH:-torch==2.13.0}" != skip ] && ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q "${ZRL_TORCH:-torch==2.13.0}"
fi
python -m pip install -q -e ".[dev]"
for plugin in plugins/*/; do
  if [ -f "$plugin/pyproject.toml" ]; then python -m pip install -q -e "$plugin"; fi
done
