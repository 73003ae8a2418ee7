#!/usr/bin/env bash
# The GPU engine matrix (python -m bench.engines) on a CUDA machine, with num_processes = the visible GPUs.
#
#   bash scripts/gpu_engines.sh                     # in an environment that has zrl, its plugins and DeepSpeed
#   bash scripts/gpu_engines.sh WHEELS [ARGS...]    # an offline machine: install from a folder of wheels first
#
# WHEELS holds wheels of trl, transformers, datasets, dill, multiprocess, math-verify, latex2sympy2_extended,
# antlr4-python3-runtime, pydantic, pydantic-core, annotated-types, typing-inspection, hjson and DeepSpeed's sdist
# (built here with DS_BUILD_OPS=0: its CUDA ops are compiled on first use, and this run needs none); they are
# installed into a target folder put on PYTHONPATH, with zrl and its plugins as distributions (entry points).
# Further ARGS go to bench.engines (e.g. --parallel 6 --copy-to "$OUT"). Results: bench/results/engines_<gpu>.*
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ] && [ -d "$1" ]; then
  wheels=$1
  shift
  site=${ZRL_SITE:-/tmp/zrl-site}
  pip_target=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation
              --target "$site" --upgrade)
  "${pip_target[@]}" "$wheels"/*.whl
  DS_BUILD_OPS=0 "${pip_target[@]}" "$wheels"/deepspeed-*.tar.gz
  "${pip_target[@]}" . plugins/zrl-*/
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
python3 - <<'EOF'
import importlib.metadata as md
import torch
print("gpu:", torch.cuda.get_device_name(0), "x", torch.cuda.device_count())
print({p: md.version(p) for p in ("torch", "transformers", "trl", "accelerate", "peft", "deepspeed", "datasets",
                                  "pyarrow", "zrl-plugins", "zrl-rollouts")})
EOF
python3 -m bench.engines "$@"
