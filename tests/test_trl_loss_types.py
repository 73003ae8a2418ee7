"""Every TRL loss type × scale_rewards keeps its meaning under zrl: ``ZRLConfig(loss_type=X, scale_rewards=Y)``
gives TRL's advantages, loss and gradients on the same batch — unequal completion lengths, importance ratios ≠ 1,
a reference model that differs from the policy — at 1 and 2 gradient-accumulation steps
(zrl_plugins/trainers/trl_options.py translates the options into a policy loss and a normalizer)."""

from __future__ import annotations

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from tests.helpers import TINY_TRAINING, char_count_reward, compare_with_trl
from zrl_plugins import ZRLConfig, ZRLGRPOTrainer

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
OPTIONS = dict(TINY_TRAINING, beta=0.04, epsilon_high=0.28, max_steps=1)


def _pair(tmp_path, model, data, **trl_options):
    trl = GRPOTrainer(
        model,
        char_count_reward,
        args=GRPOConfig(output_dir=str(tmp_path / "t"), **OPTIONS, **trl_options),
        train_dataset=data,
    )
    zrl = ZRLGRPOTrainer(
        model,
        char_count_reward,
        args=ZRLConfig(output_dir=str(tmp_path / "z"), **OPTIONS, **trl_options),
        train_dataset=data,
    )
    return trl, zrl


def _compare(trl, zrl, data, accumulation: int) -> dict:
    for trainer in (trl, zrl):
        trainer.args.gradient_accumulation_steps = trainer.args.steps_per_generation = accumulation
    result = compare_with_trl(trl, zrl, [dict(data[i]) for i in range(2) for _ in range(4)])
    torch.testing.assert_close(result["zrl_out"]["advantages"], result["trl_out"]["advantages"], atol=1e-6, rtol=0)
    assert abs(result["trl_loss"].item()) > 1e-5  # a real loss, not a vacuous zero
    torch.testing.assert_close(result["zrl_loss"], result["trl_loss"], atol=1e-6, rtol=1e-6)
    for name, grad in result["trl_grads"].items():
        torch.testing.assert_close(result["zrl_grads"][name], grad, atol=1e-6, rtol=1e-5, msg=name)
    return result


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_type_and_scale_rewards_reproduce_trl(
    loss_type, scale_rewards, tmp_path, tiny_model_path, arithmetic_dataset
):
    trl, zrl = _pair(tmp_path, tiny_model_path, arithmetic_dataset, loss_type=loss_type, scale_rewards=scale_rewards)
    for accumulation in (1, 2):
        _compare(trl, zrl, arithmetic_dataset, accumulation)


@pytest.mark.parametrize("loss_type", ["grpo", "luspo"])  # GSPO; LUSPO as its paper runs it
def test_sequence_level_importance_sampling_reproduces_trl(loss_type, tmp_path, tiny_model_path, arithmetic_dataset):
    trl, zrl = _pair(
        tmp_path, tiny_model_path, arithmetic_dataset, loss_type=loss_type, importance_sampling_level="sequence"
    )
    for accumulation in (1, 2):
        _compare(trl, zrl, arithmetic_dataset, accumulation)


def test_trl_defaults_are_kept_when_nothing_is_chosen(tmp_path):
    config = ZRLConfig(output_dir=str(tmp_path), use_cpu=True)
    trl_defaults = GRPOConfig(output_dir=str(tmp_path), use_cpu=True)
    assert (config.loss_type, config.scale_rewards) == (trl_defaults.loss_type, trl_defaults.scale_rewards)
    assert (config.normalizer, config.normalizer_kwargs, config.policy_loss) == (
        "grpo",
        {"aggregation": "token_mean"},
        "clip",
    )
