"""Resume exactness: a run resumed from checkpoint 2 takes the same step 3 as the uninterrupted run (loss, reward,
KL, β, parameters), for each KL controller and for a rollout strategy with its own random state."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import char_count_reward, rehash_checkpoint, tiny_config
from zrl_plugins import ZRLGRPOTrainer

ADAPTIVE = {"controller": "adaptive", "controller_kwargs": {"target_kl": 0.001, "horizon": 10}}
CASES = {
    "k3+fixed": dict(kl_penalty="k3", beta=0.05),
    "k1+adaptive": dict(kl_penalty="k1", beta=0.05, kl_penalty_kwargs=ADAPTIVE),
    "low_var_kl+adaptive, reward placement": dict(
        kl_penalty="low_var_kl", beta=0.05, kl_penalty_kwargs={**ADAPTIVE, "placement": "reward"}
    ),
    "nested rollout": dict(kl_penalty="none", rollout="nested", rollout_kwargs={"skip_ratio": 0.25}),
}


def _run_and_resume(trainer, tmp_path, checkpoint: str):
    """An uninterrupted run ``a``, and a run ``b`` resumed from ``a``'s ``checkpoint``."""
    first = trainer("a")
    first.train()
    resumed = trainer("b")
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "out" / checkpoint))
    return first, resumed


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_resume_takes_the_same_next_step(case, tmp_path, tiny_model_path, arithmetic_dataset):
    options = dict(max_steps=3, save_strategy="steps", save_steps=2, **CASES[case])

    def trainer(run: str) -> ZRLGRPOTrainer:
        args = tiny_config(tmp_path / run, **options)
        return ZRLGRPOTrainer(tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset)

    first, resumed = _run_and_resume(trainer, tmp_path, "checkpoint-2")

    def step3(t: ZRLGRPOTrainer) -> dict:
        return next(h for h in t.state.log_history if h.get("step") == 3 and "loss" in h)

    a, b = step3(first), step3(resumed)
    keys = [
        k for k in ("loss", "reward", "kl", "kl_coef", "rollout/is_weight_mean", "completions/mean_length") if k in a
    ]
    assert "reward" in keys and "loss" in keys
    for key in keys:
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
    assert resumed.kl_penalty.controller.beta == pytest.approx(first.kl_penalty.controller.beta)
    if "adaptive" in case:  # the controller moved, so restoring it mattered
        assert first.kl_penalty.controller.beta != pytest.approx(0.05)
    for p, q in zip(first.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    state_a, state_b = first.rollout_strategy, resumed.rollout_strategy
    if hasattr(state_a, "state_dict"):
        assert state_b.state_dict() == state_a.state_dict()


def test_a_checkpoint_lacking_one_state_entry_loads_with_a_warning(tmp_path, tiny_model_path, arithmetic_dataset):
    """As written by an older plugin version that had no state for the KL controller: warn, keep the initial β."""
    options = dict(
        max_steps=1, save_strategy="steps", save_steps=1, kl_penalty="k1", beta=0.05, kl_penalty_kwargs=ADAPTIVE
    )
    first = ZRLGRPOTrainer(
        tiny_model_path,
        char_count_reward,
        args=tiny_config(tmp_path / "a", **options),
        train_dataset=arithmetic_dataset,
    )
    first.train()
    state_file = tmp_path / "a" / "out" / "checkpoint-1" / "zrl_state_0.pt"
    state = torch.load(state_file, weights_only=False)
    del state["components"]["kl_penalty"]
    torch.save(state, state_file)
    rehash_checkpoint(state_file.parent)

    options["max_steps"] = 2
    resumed = ZRLGRPOTrainer(
        tiny_model_path,
        char_count_reward,
        args=tiny_config(tmp_path / "b", **options),
        train_dataset=arithmetic_dataset,
    )
    with pytest.warns(UserWarning, match="has no state for kl_penalty"):
        resumed.train(resume_from_checkpoint=str(state_file.parent))
    assert resumed.state.global_step == 2  # training went on


BUFFERED = {
    "steps_per_generation=2": dict(steps_per_generation=2),
    "num_iterations=2": dict(num_iterations=2, kl_penalty="k1", beta=0.05, kl_penalty_kwargs=ADAPTIVE),
    "ppo epochs and mini-batches": dict(steps_per_generation=2, num_iterations=2, ppo=True),
}


@pytest.mark.parametrize("case", BUFFERED, ids=list(BUFFERED))
def test_resume_inside_a_generation_buffer_is_exact(case, tmp_path, tiny_model_path, arithmetic_dataset):
    """A checkpoint after step 1 falls inside a generation buffer (steps 1-2, or 1-4): the resumed run reuses the
    buffered batches as the uninterrupted run does. Was: it generated a new batch at step 2 (losses at steps 2-4
    differed; with num_iterations=2 the final β was 0.05079 instead of 0.04919)."""
    options = dict(BUFFERED[case])
    ppo = options.pop("ppo", False)
    options = dict(max_steps=4, save_strategy="steps", save_steps=1, per_device_train_batch_size=4, **options)

    def trainer(run: str):
        if ppo:
            from tests.helpers import TINY_TRAINING
            from zrl_plugins import ZRLPPOConfig, ZRLPPOTrainer

            args = ZRLPPOConfig(
                **{**TINY_TRAINING, **options, "output_dir": str(tmp_path / run / "out"), "critic_learning_rate": 1e-2}
            )
            return ZRLPPOTrainer(tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset)
        args = tiny_config(tmp_path / run, **options)
        return ZRLGRPOTrainer(tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset)

    first, resumed = _run_and_resume(trainer, tmp_path, "checkpoint-1")

    def logged(t) -> dict[int, dict]:
        return {h["step"]: h for h in t.state.log_history if "loss" in h}

    a, b = logged(first), logged(resumed)
    assert {2, 3, 4} <= set(b)
    for step in (2, 3, 4):
        keys = [k for k in ("loss", "reward", "completions/mean_length", "kl_coef") if k in a[step]]
        assert "loss" in keys and [k for k in keys if k in b[step]] == keys, (step, keys)
        for key in keys:
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-5, abs=1e-7), (step, key)
    assert resumed.kl_penalty.controller.beta == pytest.approx(first.kl_penalty.controller.beta, rel=1e-6)
    for p, q in zip(first.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
