#!/usr/bin/env bash
# The vLLM test lane: set up .venv-vllm (vLLM's CPU build) and run the tests marked `vllm`; arguments go to pytest.
#   ZRL_VLLM_DRY_RUN=0 skips the check that `pip install ".[vllm]"` resolves with the GPU vLLM wheel (it reads the
#   package index: about 2 minutes on a cold pip cache).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_vllm.sh
# shellcheck disable=SC1091
. .venv-vllm/bin/activate
if [ "${ZRL_VLLM_DRY_RUN:-1}" != 0 ]; then
  report=$(mktemp)
  python -m pip install -q --dry-run --ignore-installed --report "$report" ".[vllm]"
  python - "$report" <<'PY'
import json, sys
picked = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
print(f"zrl-plugins[vllm] resolves: vllm {picked['vllm']}, torch {picked['torch']}, transformers {picked['transformers']}")
PY
  rm -f "$report"
fi
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
python -m pytest -q -m vllm tests/vllm_lane "$@"
