"""TRL's vLLM colocate mode with zrl on vLLM's CPU build: the weight sync and training with every kind of ingredient.

Run by ``bash scripts/test_vllm.sh`` (its own environment, ``.venv-vllm``); skipped where vLLM is not installed.
Each scenario runs in a process of its own (``scenarios.py``): vLLM sets up torch.distributed for its colocated
engine and starts workers with spawn.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import TINY_RECIPE_FLAGS

pytest.importorskip("vllm", reason="vLLM is not installed: run `bash scripts/test_vllm.sh`")
pytestmark = pytest.mark.vllm

SCENARIOS = Path(__file__).with_name("scenarios.py")
# The trainer's log-probs of what vLLM sampled, one optimizer step (lr 5e-2) after the start: with the weights
# synced they differ by rounding (measured mean 0.002); with vLLM left on the initial weights by 0.22 (the
# `no_sync` control below).
SYNCED_LOGP_GAP = 0.02


def run(name: str, *args: str, workdir: Path) -> dict[str, Any]:
    out = workdir / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(SCENARIOS), name, str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=workdir,
    )
    if proc.returncode != 0:
        pytest.fail(f"scenario {name} {args} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


@pytest.mark.parametrize("variant", ["untied", "tied", "lora"])
def test_sync_matches_a_fresh_engine(variant, tmp_path):
    synced = run("sync_matches_fresh", str(tmp_path), variant, workdir=tmp_path)
    fresh = run("fresh_engine", synced["expected_dir"], workdir=tmp_path)
    assert synced["before"] != synced["after"], "the changed weights did not change vLLM's generations"
    assert synced["after"] == fresh["greedy"]
    if variant == "lora":
        assert synced["still_lora"], "the adapters must be unmerged again after the sync"


def _last_gap(result: dict[str, Any]) -> float:
    return result["logs"][-1]["sampling/sampling_logp_difference/mean"]


def test_stale_weights_are_detected(tmp_path):
    """The control for the training tests: without a sync, the gap between vLLM's and the trainer's log-probs is
    far above ``SYNCED_LOGP_GAP`` after one step."""
    result = run("train", str(tmp_path), "no_sync", workdir=tmp_path)
    assert _last_gap(result) > 5 * SYNCED_LOGP_GAP


@pytest.mark.parametrize("setup", ["grpo_ingredients", "lora", "dynamic_sampling", "ppo", "icepop"])
def test_training_with_vllm_colocate(setup, tmp_path):
    result = run("train", str(tmp_path), setup, workdir=tmp_path)
    assert result["steps"] == (3 if setup == "dynamic_sampling" else 2)
    assert result["changed"] > 0
    assert _last_gap(result) < SYNCED_LOGP_GAP, "vLLM did not generate from the trained weights"
    assert result["sent"], "no weights were synced"
    assert not [n for n in result["sent"] if "lora_" in n or "zrl_critic" in n or "zrl_value_head" in n]
    if setup == "grpo_ingredients":
        assert result["logs"][-1]["kl"] > 0
    if setup == "dynamic_sampling":
        assert sum(log["rollout/resample_rounds_mean"] for log in result["logs"]) > 0  # re-sampled through vLLM
    if setup == "ppo":
        assert any(k.startswith("critic/") for k in result["logs"][-1])
    # every vLLM run is off-policy: the mismatch is logged (TRL's default correction, or the one selected)
    last = result["logs"][-1]
    assert {"rollout/behaviour_kl", "rollout/ess", "rollout/masked_fraction"} <= last.keys()
    assert 0 < last["rollout/ess"] <= 1
    if setup == "icepop":
        assert "sampling/importance_sampling_ratio/min" in last


@pytest.mark.parametrize("method", ["simplerl_zoo", "ppo_max"])
def test_zrl_train_with_use_vllm(method, tmp_path):
    zrl = Path(sys.executable).with_name("zrl")
    flags = [
        "--preset",
        "cpu-demo",
        "--model_name_or_path",
        "small",
        "--use_vllm",
        "true",
        *TINY_RECIPE_FLAGS,
        "--bf16",
        "false",
        "--output_dir",
        str(tmp_path),
    ]
    proc = subprocess.run([str(zrl), "train", method, *flags], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    steps = [h for h in summary["log_history"] if "loss" in h]
    assert summary["config"]["use_vllm"] is True and len(steps) == 2
    assert steps[-1]["sampling/sampling_logp_difference/mean"] < SYNCED_LOGP_GAP
