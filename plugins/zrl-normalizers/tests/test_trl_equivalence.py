"""Where a normalizer coincides with a TRL option, ZRLGRPOTrainer reproduces TRL's advantages, loss and gradients."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from tests.helpers import compare_with_trl
from zrl_plugins import ZRLConfig, ZRLGRPOTrainer

DATA = Dataset.from_list([{"prompt": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(16)])
COMMON = dict(
    per_device_train_batch_size=8,
    num_generations=4,
    max_completion_length=8,
    report_to=[],
    use_cpu=True,
    bf16=False,
    save_strategy="no",
    gradient_checkpointing=False,
    seed=0,
    beta=0.04,
)


def reward(prompts, completions, **kwargs):
    return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]


@pytest.mark.parametrize(
    ("normalizer", "trl_options"),
    [
        ("dr_grpo", {"scale_rewards": "none", "loss_type": "dr_grpo"}),
        ("lite_ppo", {"scale_rewards": "batch", "loss_type": "dapo"}),  # token mean ≡ dapo on one process
    ],
)
@pytest.mark.parametrize("accumulation", [1, 2])
def test_matches_trl(tmp_path, tiny_model_path, normalizer, trl_options, accumulation):
    options = {**COMMON, "gradient_accumulation_steps": accumulation}
    trl = GRPOTrainer(
        tiny_model_path,
        reward,
        args=GRPOConfig(output_dir=str(tmp_path / "t"), **options, **trl_options),
        train_dataset=DATA,
    )
    zrl = ZRLGRPOTrainer(
        tiny_model_path,
        reward,
        args=ZRLConfig(output_dir=str(tmp_path / "z"), **options, normalizer=normalizer),
        train_dataset=DATA,
    )
    result = compare_with_trl(trl, zrl, [dict(DATA[i]) for i in range(2) for _ in range(4)])
    assert result["trl_out"]["advantages"].abs().sum() > 0
    torch.testing.assert_close(result["zrl_out"]["advantages"], result["trl_out"]["advantages"], atol=1e-6, rtol=0)
    assert abs(result["trl_loss"].item()) > 1e-5
    torch.testing.assert_close(result["zrl_loss"], result["trl_loss"], atol=1e-6, rtol=0)
    for name, grad in result["trl_grads"].items():
        torch.testing.assert_close(result["zrl_grads"][name], grad, atol=1e-6, rtol=1e-5, msg=name)
