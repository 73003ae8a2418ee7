"""What TRL's GRPOTrainer supports keeps working under ZRLGRPOTrainer: environments, num_generations_eval=1,
normalize_then_sum, the adaptive and static entropy bonus (with TRL's entropy_coef metric), and the caller's rows are
not mutated. Each is checked against TRL itself on the same inputs where TRL computes numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from tests.helpers import TINY_TRAINING, char_count_reward, compare_with_trl
from zrl_plugins import ZRLConfig, ZRLGRPOTrainer


def length_reward(prompts, completions, **kwargs):
    return [float(len(c) % 5) for c in completions]


def _both(tmp_path, model, data, reward_funcs, **options):
    options = {**TINY_TRAINING, **options}
    trl = GRPOTrainer(
        model, reward_funcs, args=GRPOConfig(output_dir=str(tmp_path / "t"), **options), train_dataset=data
    )
    zrl = ZRLGRPOTrainer(
        model, reward_funcs, args=ZRLConfig(output_dir=str(tmp_path / "z"), **options), train_dataset=data
    )
    return trl, zrl


def test_normalize_then_sum_reproduces_trl(tmp_path, tiny_model_path, arithmetic_dataset):
    trl, zrl = _both(
        tmp_path,
        tiny_model_path,
        arithmetic_dataset,
        [char_count_reward, length_reward],
        multi_objective_aggregation="normalize_then_sum",
        reward_weights=[1.0, 0.5],
        beta=0.04,
    )
    assert zrl.args.normalizer == "batch"
    result = compare_with_trl(trl, zrl, [dict(arithmetic_dataset[i]) for i in range(2) for _ in range(4)])
    torch.testing.assert_close(result["zrl_out"]["advantages"], result["trl_out"]["advantages"], atol=1e-6, rtol=0)
    torch.testing.assert_close(result["zrl_loss"], result["trl_loss"], atol=1e-6, rtol=1e-6)
    for name, grad in result["trl_grads"].items():
        torch.testing.assert_close(result["zrl_grads"][name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("adaptive", [False, True])
def test_entropy_bonus_and_its_coefficient_follow_trl(adaptive, tmp_path, tiny_model_path, arithmetic_dataset):
    """Three steps of each trainer from the same seed: losses and entropy_coef (logged every step, as TRL does)
    agree; the adaptive controller moves the coefficient."""
    options = {"entropy_coef": 0.05, "max_steps": 3, "loss_type": "grpo", "beta": 0.0}
    if adaptive:  # a target above the model's entropy: the coefficient climbs each step
        options.update(use_adaptive_entropy=True, entropy_target=10.0, entropy_coef_delta=0.02, entropy_coef_max=1.0)
    logs = {}
    for name, trainer in zip(
        ("trl", "zrl"), _both(tmp_path, tiny_model_path, arithmetic_dataset, char_count_reward, **options), strict=True
    ):
        torch.manual_seed(0)
        trainer.train()
        logs[name] = [h for h in trainer.state.log_history if "loss" in h]
    for trl_step, zrl_step in zip(logs["trl"], logs["zrl"], strict=True):
        assert zrl_step["entropy_coef"] == pytest.approx(trl_step["entropy_coef"])
        assert zrl_step["loss"] == pytest.approx(trl_step["loss"], abs=1e-6)
    coefs = [h["entropy_coef"] for h in logs["zrl"]]
    assert coefs == ([0.05, 0.05, 0.05] if not adaptive else pytest.approx([0.07, 0.09, 0.11]))


def test_num_generations_eval_1_evaluates(tmp_path, tiny_model_path, arithmetic_dataset):
    args = ZRLConfig(
        output_dir=str(tmp_path),
        **{
            **TINY_TRAINING,
            "num_generations_eval": 1,
            "per_device_eval_batch_size": 4,
            "eval_strategy": "steps",
            "eval_steps": 1,
            "normalizer": "grpo",
        },
    )
    trainer = ZRLGRPOTrainer(
        tiny_model_path,
        char_count_reward,
        args=args,
        train_dataset=arithmetic_dataset,
        eval_dataset=arithmetic_dataset.select(range(4)),
    )
    metrics = trainer.evaluate()
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    assert metrics["eval_loss"] == 0.0  # one completion per prompt: every advantage is 0, as in TRL


def test_the_callers_rows_are_not_mutated(tmp_path, tiny_model_path, arithmetic_dataset):
    seen = []

    def verifier(prompts, completions, completion_truncated, **kwargs):
        seen.extend(completion_truncated)  # verifiers still receive the column
        return [1.0 for _ in completions]

    trainer = ZRLGRPOTrainer(
        tiny_model_path,
        verifier,
        train_dataset=arithmetic_dataset,
        args=ZRLConfig(output_dir=str(tmp_path), **TINY_TRAINING),
    )
    trainer.model.train()
    rows = [dict(arithmetic_dataset[i]) for i in range(2) for _ in range(4)]
    before = [dict(r) for r in rows]
    trainer._generate_and_score_completions(rows)
    assert rows == before and len(seen) == 8


class Counter:
    """An environment in TRL's sense: ``reset``, a tool method and the reward it owns."""

    def __init__(self):
        self.n = 0

    def reset(self, **kwargs):
        self.n = 0

    def increment(self, by: int) -> str:
        """Add to the counter.

        Args:
            by: how much to add.
        """
        self.n += by
        return str(self.n)

    def get_reward(self) -> float:
        return float(self.n)


def test_environments_train_as_in_trl(tmp_path, tiny_model_path):
    import trl
    from transformers import AutoTokenizer

    template = Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja"  # a tool-calling template TRL can parse
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"count to {a}"}]} for a in range(8)])
    rewards = {}
    for name, cls, config in (("trl", GRPOTrainer, GRPOConfig), ("zrl", ZRLGRPOTrainer, ZRLConfig)):
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
        tokenizer.chat_template = template.read_text()
        args = config(output_dir=str(tmp_path / name), **{**TINY_TRAINING, "max_steps": 1})
        trainer = cls(
            tiny_model_path, args=args, train_dataset=data, processing_class=tokenizer, environment_factory=Counter
        )  # the environment owns the reward: no reward_funcs
        trainer.train()
        rewards[name] = [h["reward"] for h in trainer.state.log_history if "loss" in h]
    assert rewards["zrl"] == rewards["trl"]
