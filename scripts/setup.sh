#!/usr/bin/env bash
# Create .venv and install zrl, its plugins and the dev tools. Safe to re-run.
#   ZRL_TORCH: what `pip install` gets for torch, installed first. Unset: torch==2.13.0 (the CPU build this project's
#   machines carry on disk), only when .venv has no torch yet. Set, it is always installed, pip arguments included,
#   e.g. ZRL_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" for a CUDA build.
#   ZRL_TORCH=skip keeps whatever torch is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip 2>/dev/null || true
if [ -n "${ZRL_TORCH:-}" ]; then
  # shellcheck disable=SC2086  # split on purpose: ZRL_TORCH may carry pip arguments (--index-url ...)
  [ "$ZRL_TORCH" = skip ] || python -m pip install -q $ZRL_TORCH
elif ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q torch==2.13.0
fi
python -m pip install -q -e ".[dev]"
for plugin in plugins/*/; do
  if [ -f "$plugin/pyproject.toml" ]; then python -m pip install -q -e "$plugin"; fi
done
