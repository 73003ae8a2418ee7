"""Both strategies with several processes (2 CPU processes over gloo) and with PEFT (LoRA)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from datasets import Dataset
from peft import LoraConfig

from tests.helpers import launch_two_cpu_processes, tiny_config
from zrl_plugins import ZRLGRPOTrainer

SCRIPT = Path(__file__).parent / "scripts" / "two_processes.py"


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory):
    from zrl_plugins.apps.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("four"), num_layers=4))  # layers 1 and 2 can be skipped


CASES = {
    "nested": ("nested", {"skip_ratio": 0.25}),
    "dynamic_sampling": ("dynamic_sampling", {"max_resamples": 2}),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_two_processes(case, four_layers, tmp_path):
    rollout, kwargs = CASES[case]
    result = launch_two_cpu_processes(SCRIPT, four_layers, str(tmp_path), rollout, json.dumps(kwargs))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)  # DDP kept the replicas equal
    log = ranks[0]["logs"][0]
    assert math.isfinite(log["loss"])
    if case == "nested":
        assert log["rollout/skipped_layers"] == 1.0
        # every rank skips the same layers in the same batch: the layer choice is seeded per batch, not per rank
        assert ranks[0]["state"] == ranks[1]["state"]
    else:
        assert log["rollout/kept_groups_final"] >= log["rollout/kept_groups_initial"]


@pytest.mark.parametrize("case", CASES)
def test_with_lora(case, four_layers, tmp_path):
    rollout, kwargs = CASES[case]
    data = Dataset.from_list([{"prompt": f"What is {a} + 1?", "answer": str(a + 1), "a": a} for a in range(16)])

    def parity_reward(prompts, completions, a, **_):
        return [1.0 if x % 2 == 0 else float(len(c) % 3) for c, x in zip(completions, a, strict=True)]

    args = tiny_config(
        tmp_path,
        max_completion_length=6,
        kl_penalty="k3",
        beta=0.01,
        rollout=rollout,
        rollout_kwargs=kwargs,
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = ZRLGRPOTrainer(four_layers, parity_reward, args=args, train_dataset=data, peft_config=lora)
    assert trainer.ref_model is None  # the reference is the base model with the adapter disabled
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert math.isfinite(log["loss"]) and "kl" in log
    if case == "nested":
        assert log["rollout/skipped_layers"] == 1.0
    after = dict(trainer.model.named_parameters())
    assert any(not after[n].detach().equal(p) for n, p in before.items())  # the adapter learned
