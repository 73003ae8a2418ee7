"""dynamic_sampling: group statistics by hand, row surgery, and training that never keeps an uninformative group and
honours the resampling bound."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from tests.helpers import tiny_config
from zrl_plugins import ZRLGRPOTrainer, hookimpl, load_component
from zrl_plugins.framework.errors import ConfigError
from zrl_plugins.framework.group_filter import swap_rows, uninformative_groups
from zrl_plugins.framework.plugins import ZRLPluginManager

# even a: every completion gets the same reward (no signal); odd a: rewards vary with the completion
DATA = Dataset.from_list([{"prompt": f"What is {a} + 1?", "answer": str(a + 1), "a": a} for a in range(16)])


class CountingReward:
    def __init__(self, constant: bool = False):
        self.constant = constant
        self.calls = 0
        self.__name__ = "parity_reward"

    def __call__(self, prompts, completions, a, **kwargs):
        self.calls += 1
        return [1.0 if self.constant or x % 2 == 0 else float(len(c) % 3) for c, x in zip(completions, a)]


class Spy:
    def __init__(self):
        self.batches = []

    @hookimpl
    def zrl_on_rollout_batch(self, trainer, batch):
        self.batches.append(batch)


def trainer_for(path, tmp_path, reward, **rollout_kwargs):
    pm = ZRLPluginManager()
    spy = Spy()
    pm.register_plugin(spy, name="spy")
    args = tiny_config(
        tmp_path,
        max_completion_length=6,
        kl_penalty="none",
        rollout="dynamic_sampling",
        rollout_kwargs=rollout_kwargs,
    )
    return ZRLGRPOTrainer(path, reward, args=args, train_dataset=DATA, plugin_manager=pm), spy


def test_uninformative_groups_by_hand():
    nan = float("nan")
    rewards = torch.tensor([1, 1, 1, 1, 0, 1, 0, 0, nan, 2, 2, nan, nan, nan, nan, 3, nan, 1, 0, nan])
    assert uninformative_groups(rewards, 4).tolist() == [True, False, True, True, False]
    sampler = load_component("rollout", "dynamic_sampling")
    assert sampler.keep_groups(rewards.view(-1, 4)).tolist() == [False, True, False, False, True]


def test_swap_rows_pads_prompts_left_and_completions_right():
    base = {
        "prompt_ids": torch.tensor([[0, 5], [6, 7]]),
        "completion_ids": torch.tensor([[1], [2]]),
        "completion_mask": torch.tensor([[1], [1]]),
        "num_items_in_batch": torch.tensor(2),
    }
    donor = {
        "prompt_ids": torch.tensor([[8, 9, 9], [0, 0, 3]]),
        "completion_ids": torch.tensor([[4, 4], [5, 0]]),
        "completion_mask": torch.tensor([[1, 1], [1, 0]]),
        "num_items_in_batch": torch.tensor(3),
    }
    merged = swap_rows(base, donor, torch.tensor([False, True]))
    assert merged["prompt_ids"].tolist() == [[0, 0, 5], [0, 0, 3]]
    assert merged["completion_ids"].tolist() == [[1, 0], [5, 0]]
    assert merged["completion_mask"].tolist() == [[1, 0], [1, 0]]
    with pytest.raises(NotImplementedError, match="pixel_values"):
        swap_rows({**base, "pixel_values": torch.zeros(2)}, donor, torch.tensor([True, False]))


def test_training_never_keeps_an_uninformative_group(tiny_model_path, tmp_path):
    reward = CountingReward()
    trainer, spy = trainer_for(tiny_model_path, tmp_path, reward, max_resamples=6)
    trainer.train()
    for batch in spy.batches:
        kept = batch["completion_mask"].sum(-1) > 0
        rewards = batch["rewards"].view(-1, 4)
        for group, group_kept in zip(rewards, kept.view(-1, 4)):
            if group_kept.any():
                assert group_kept.all() and group.max() > group.min()  # every kept group carries signal
        assert batch["advantages"][~kept].abs().max() == 0 if (~kept).any() else True
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert log["rollout/kept_groups_final"] >= log["rollout/kept_groups_initial"]
    assert log["rollout/kept_groups_final"] == 1.0  # half the prompts are informative: 6 rounds suffice here
    assert reward.calls > 2  # re-sampling happened


def test_the_resampling_bound_holds_and_training_goes_on(tiny_model_path, tmp_path):
    reward = CountingReward(constant=True)  # no group is ever informative
    trainer, spy = trainer_for(tiny_model_path, tmp_path, reward, max_resamples=2)
    trainer.train()
    assert reward.calls == 2 * (1 + 2)  # 2 steps x (the batch + 2 re-sampling rounds)
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert log["rollout/resample_rounds_mean"] == 2.0 and log["rollout/kept_groups_final"] == 0.0
    assert all(batch["completion_mask"].sum() == 0 for batch in spy.batches)  # nothing left to train on
    assert math.isfinite(log["loss"]) and log["loss"] == 0.0


def test_wraps_another_strategy_and_checks_group_layout(tiny_model_path, tmp_path):
    sampler = load_component("rollout", "dynamic_sampling", inner="nested", inner_kwargs={"skip_ratio": 0.25})
    assert sampler.off_policy and sampler.replaces_generation and callable(sampler.observe_mismatch)
    reward = CountingReward()
    trainer, _ = trainer_for(tiny_model_path, tmp_path, reward, inner="nested", max_resamples=2)
    trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert "rollout/is_weight_mean" in log and "rollout/kept_groups_final" in log
    assert trainer.rollout_strategy.state_dict()["inner"]["batches"] >= 2
    # two processes x 2 rows with groups of 4: a group would straddle the processes
    two_process_layout = SimpleNamespace(
        args=SimpleNamespace(per_device_train_batch_size=2, steps_per_generation=1, num_generations=4), use_vllm=False
    )
    with pytest.raises(ConfigError, match="must be a multiple of num_generations"):
        sampler.validate(two_process_layout)
