"""ZRLGRPOTrainer: components chosen by name, observer hooks, checkpoint state, KL placement, error paths."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from tests.helpers import char_count_reward, tiny_config
from zrl_plugins import ComponentContractError, PluginError, UnknownComponentError, ZRLGRPOTrainer, hookimpl
from zrl_plugins.builtins.kl import K3KLPenalty
from zrl_plugins.builtins.normalizers import GRPONormalizer
from zrl_plugins.framework.plugins import ZRLPluginManager
from zrl_plugins.trainers.checkpoint import CheckpointError


class DoublingController:
    """A stateful controller: β doubles at every optimizer step (easy to check after a resume)."""

    def __init__(self, beta):
        self._beta = beta
        self.updates = 0

    @property
    def beta(self):
        return self._beta

    def update(self, observed_kl, n_steps):
        self._beta *= 2
        self.updates += 1
        self.last_update = (observed_kl, n_steps)

    def state_dict(self):
        return {"beta": self._beta, "updates": self.updates}

    def load_state_dict(self, state):
        self._beta, self.updates = state["beta"], state["updates"]


class DoublingKL(K3KLPenalty):
    def __init__(self, beta=0.01, placement="loss"):
        super().__init__(beta=beta, placement=placement)
        self.controller = DoublingController(beta)


class Recorder:
    """A plugin that records every observer call and registers a few components."""

    def __init__(self):
        self.batches, self.logs, self.saved, self.loaded = [], [], [], []

    @hookimpl
    def zrl_register_verifiers(self, register):
        register("digits", lambda: char_count_reward)
        register("raises", lambda: _raising_verifier)
        register("wrong_count", lambda: lambda prompts, completions, **kw: [1.0])
        register("nan_reward", lambda: lambda prompts, completions, **kw: [float("nan")] * len(completions))

    @hookimpl
    def zrl_register_normalizers(self, register):
        register("nan_normalizer", NaNNormalizer)
        register("wrong_shape", WrongShapeNormalizer)

    @hookimpl
    def zrl_register_kl_penalties(self, register):
        register("doubling", DoublingKL)

    @hookimpl
    def zrl_on_rollout_batch(self, trainer, batch):
        self.batches.append(batch)

    @hookimpl
    def zrl_on_log(self, trainer, logs):
        self.logs.append(dict(logs))
        logs["recorder/calls"] = float(len(self.logs))

    @hookimpl
    def zrl_on_save_checkpoint(self, trainer, checkpoint_dir, state):
        state["recorder"] = {"batches": len(self.batches)}
        self.saved.append(checkpoint_dir)

    @hookimpl
    def zrl_on_load_checkpoint(self, trainer, checkpoint_dir, state):
        self.loaded.append((checkpoint_dir, dict(state)))


def _raising_verifier(prompts, completions, **kwargs):
    raise ZeroDivisionError("bad row 3")


class NaNNormalizer(GRPONormalizer):
    def advantages(self, rewards, group_size):
        return torch.full_like(rewards, float("nan"))


class WrongShapeNormalizer(GRPONormalizer):
    def advantages(self, rewards, group_size):
        return rewards[:-1]


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def pm(recorder):
    manager = ZRLPluginManager()
    manager.register_plugin(recorder, name="recorder", distribution="recorder-dist")
    return manager


def _trainer(tmp_path, model_path, dataset, pm, **overrides):
    args = tiny_config(tmp_path, **{"verifiers": ["digits"], **overrides})
    return ZRLGRPOTrainer(model_path, args=args, train_dataset=dataset, plugin_manager=pm)


def test_training_by_name_calls_every_observer(tmp_path, tiny_model_path, arithmetic_dataset, pm, recorder):
    trainer = _trainer(tmp_path, tiny_model_path, arithmetic_dataset, pm, max_steps=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters()), "no parameter moved"
    assert len(recorder.batches) == 2
    batch = recorder.batches[0]
    assert set(batch) >= {"prompts", "completions", "rewards", "rewards_per_func", "advantages", "mode", "step"}
    assert batch["reward_func_names"] == ["digits"] and batch["rewards"].shape == (8,)
    torch.testing.assert_close(batch["advantages"], GRPONormalizer().advantages(batch["rewards"], 4))
    step_logs = [log for log in recorder.logs if "loss" in log]
    assert step_logs and "rewards/digits/mean" in step_logs[0] and "kl_coef" in step_logs[0]
    assert any("recorder/calls" in h for h in trainer.state.log_history)  # an observer can add metrics


def test_unknown_component_in_config_fails_before_training(tmp_path, tiny_model_path, arithmetic_dataset, pm):
    expected = r"unknown normalizer 'dr_gpro'\. Installed normalizers: .*grpo \(zrl-plugins"
    with pytest.raises(UnknownComponentError, match=expected):
        _trainer(tmp_path, tiny_model_path, arithmetic_dataset, pm, normalizer="dr_gpro")
    with pytest.raises(UnknownComponentError, match="unknown verifier 'math_corect'"):
        _trainer(tmp_path, tiny_model_path, arithmetic_dataset, pm, verifiers=["math_corect"])


def test_no_reward_at_all_is_an_error(tmp_path, tiny_model_path, arithmetic_dataset, pm):
    with pytest.raises(ValueError, match="no reward: select verifiers by name"):
        _trainer(tmp_path, tiny_model_path, arithmetic_dataset, pm, verifiers=[])


def test_verifier_that_raises_is_named(tmp_path, tiny_model_path, arithmetic_dataset, pm):
    trainer = _trainer(tmp_path, tiny_model_path, arithmetic_dataset, pm, verifiers=["raises"])
    with pytest.raises(PluginError, match=r"recorder \(recorder-dist\).*raised in verifier 'raises'.*bad row 3"):
        trainer.train()


@pytest.mark.parametrize(
    ("verifier", "message"),
    [
        ("wrong_count", "verifier 'wrong_count' .* returned 1 rewards for 8 completions"),
        ("nan_reward", "verifier 'nan_reward' .* returned nan for row 0"),
    ],
)
def test_verifier_breaking_its_contract(tmp_path, tiny_model_path, arithmetic_dataset, pm, verifier, message):
    trainer = _trainer(tmp_path, tiny_model_path, arithmetic_dataset, pm, verifiers=[verifier])
    with pytest.raises(ComponentContractError, match=message):
        trainer.train()


@pytest.mark.parametrize(
    ("normalizer", "message"),
    [
        ("nan_normalizer", "normalizer 'nan_normalizer' returned NaN or infinite advantages"),
        ("wrong_shape", r"normalizer 'wrong_shape' returned advantages of shape \(7,\) for 8 rewards"),
    ],
)
def test_broken_normalizer_stops_before_the_optimizer_step(
    tmp_path, tiny_model_path, arithmetic_dataset, pm, normalizer, message
):
    trainer = _trainer(tmp_path, tiny_model_path, arithmetic_dataset, pm, normalizer=normalizer)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(ComponentContractError, match=message):
        trainer.train()
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def test_kl_in_the_reward_is_subtracted_before_normalization(
    tmp_path, tiny_model_path, arithmetic_dataset, pm, recorder
):
    beta = 0.5
    trainer = _trainer(
        tmp_path, tiny_model_path, arithmetic_dataset, pm, beta=beta, kl_penalty_kwargs={"placement": "reward"}
    )
    with torch.no_grad():  # make the reference differ from the policy so the penalty is not zero
        for p in trainer.ref_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer.model.train()
    inputs = [dict(arithmetic_dataset[i]) for i in range(2) for _ in range(4)]
    out = trainer._generate_and_score_completions(inputs)
    mask = out["completion_mask"]
    logps = trainer._policy_logps(out)
    k3 = torch.exp(out["ref_per_token_logps"] - logps) - (out["ref_per_token_logps"] - logps) - 1
    sequence_kl = (k3 * mask).sum(-1)
    assert sequence_kl.abs().max() > 1e-3
    rewards = recorder.batches[-1]["rewards_per_func"].sum(dim=1)  # what the verifiers said, as observers see it
    expected = GRPONormalizer().advantages(rewards - beta * sequence_kl, group_size=4)
    torch.testing.assert_close(out["advantages"], expected, atol=1e-5, rtol=1e-5)
    logged_kl = trainer._metrics["train"]["kl"][-1]
    assert logged_kl == pytest.approx(((k3 * mask).sum() / mask.sum()).item(), rel=1e-5)
    without_kl = GRPONormalizer().advantages(rewards, group_size=4)
    assert not torch.allclose(out["advantages"], without_kl, atol=1e-3)


def test_component_and_plugin_state_survive_a_resume(tmp_path, tiny_model_path, arithmetic_dataset, pm, recorder):
    common = dict(kl_penalty="doubling", beta=0.01, save_strategy="steps", save_steps=1)
    first = _trainer(tmp_path, tiny_model_path, arithmetic_dataset, pm, max_steps=3, **common)
    first.train()
    assert first.kl_penalty.controller.beta == pytest.approx(0.01 * 2**3)
    observed_kl, n_steps = first.kl_penalty.controller.last_update
    assert observed_kl >= 0.0 and n_steps == 8  # samples in one optimizer step: 8 rows x 1 accumulation x 1 process
    checkpoint = os.path.join(first.args.output_dir, "checkpoint-2")
    assert os.path.exists(os.path.join(checkpoint, "zrl_state_0.pt"))
    assert recorder.saved[-1].endswith("checkpoint-3")

    resumed = _trainer(tmp_path, tiny_model_path, arithmetic_dataset, pm, max_steps=3, **common)
    resumed.train(resume_from_checkpoint=checkpoint)
    # restored to β = 0.04 after 2 updates, then one more step: the same β as the uninterrupted run
    assert resumed.kl_penalty.controller.updates == 3
    assert resumed.kl_penalty.controller.beta == pytest.approx(first.kl_penalty.controller.beta)
    loaded_dir, loaded_state = recorder.loaded[-1]
    assert loaded_dir == checkpoint and loaded_state == {"recorder": {"batches": 2}}


def test_checkpoint_missing_its_zrl_state_is_refused(tmp_path, tiny_model_path, arithmetic_dataset, pm):
    """Its zrl state is part of a checkpoint: without it the checkpoint is incomplete, not silently reset (there is
    no older format without zrl state to stay compatible with)."""
    common = dict(kl_penalty="doubling", beta=0.01, save_strategy="steps", save_steps=1)
    first = _trainer(tmp_path, tiny_model_path, arithmetic_dataset, pm, max_steps=1, **common)
    first.train()
    checkpoint = os.path.join(first.args.output_dir, "checkpoint-1")
    os.remove(os.path.join(checkpoint, "zrl_state_0.pt"))
    resumed = _trainer(tmp_path, tiny_model_path, arithmetic_dataset, pm, max_steps=2, **common)
    with pytest.raises(CheckpointError, match=r"checkpoint-1 is incomplete: zrl_state_0.pt is missing"):
        resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == 0 and resumed.kl_penalty.controller.updates == 0


class CountingRollout:
    """A strategy that replaces generation: TRL's sampling, plus behaviour log-probs from the policy itself."""

    replaces_generation = True

    def __init__(self, off_policy=False):
        self.off_policy = off_policy
        self.calls = 0

    def __call__(self, prompts, trainer):
        from zrl_plugins.builtins.rollouts import generate_with_trl

        self.calls += 1
        out = generate_with_trl(prompts, trainer)
        out["logprobs"] = [[-1.0] * len(ids) for ids in out["completion_ids"]]
        out["rollout_call"] = self.calls  # extra keys reach the verifiers as columns
        return out


class RolloutPlugin:
    @hookimpl
    def zrl_register_rollouts(self, register):
        register("counting", CountingRollout)


def test_a_rollout_strategy_that_replaces_generation(tmp_path, tiny_model_path, arithmetic_dataset, pm):
    pm.register_plugin(RolloutPlugin(), name="test-rollouts")
    seen_columns = []

    def reward(prompts, completions, **columns):
        seen_columns.append(set(columns["rollout_call"]))  # one value per row
        return char_count_reward(prompts, completions)

    args = tiny_config(tmp_path, rollout="counting", max_steps=2)
    trainer = ZRLGRPOTrainer(tiny_model_path, reward, args=args, train_dataset=arithmetic_dataset, plugin_manager=pm)
    assert trainer.rollout_func is trainer.rollout_strategy
    trainer.train()
    assert trainer.rollout_strategy.calls == 2 and seen_columns == [{1}, {2}]


def test_an_off_policy_rollout_gets_old_and_behaviour_logps(tmp_path, tiny_model_path, arithmetic_dataset, pm):
    pm.register_plugin(RolloutPlugin(), name="test-rollouts")
    args = tiny_config(tmp_path, rollout="counting", rollout_kwargs={"off_policy": True})
    trainer = ZRLGRPOTrainer(
        tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset, plugin_manager=pm
    )
    trainer.model.train()
    out = trainer._generate_and_score_completions([dict(arithmetic_dataset[i]) for i in range(2) for _ in range(4)])
    mask = out["completion_mask"].bool()
    assert (out["sampling_per_token_logps"][mask] == -1.0).all()  # the behaviour log-probs, as returned
    torch.testing.assert_close(out["old_per_token_logps"], trainer._policy_logps(out))  # π_old from the policy


def test_a_rollout_func_and_a_replacing_strategy_conflict(tmp_path, tiny_model_path, arithmetic_dataset, pm):
    pm.register_plugin(RolloutPlugin(), name="test-rollouts")
    args = tiny_config(tmp_path, rollout="counting")
    with pytest.raises(ValueError, match="replaces generation, and a rollout_func was passed as well"):
        ZRLGRPOTrainer(
            tiny_model_path,
            char_count_reward,
            args=args,
            train_dataset=arithmetic_dataset,
            plugin_manager=pm,
            rollout_func=lambda prompts, trainer: {},
        )


def test_truncated_completions_get_the_configured_reward(tmp_path, tiny_model_path, arithmetic_dataset, pm, recorder):
    seen = []

    def reward(prompts, completions, completion_truncated, **columns):
        seen.append(list(completion_truncated))
        return [5.0] * len(completions)

    # max_completion_length=2: the random model almost never ends with EOS that early
    args = tiny_config(tmp_path, truncated_reward=0.0, max_completion_length=2)
    trainer = ZRLGRPOTrainer(tiny_model_path, reward, args=args, train_dataset=arithmetic_dataset, plugin_manager=pm)
    trainer.model.train()
    trainer._generate_and_score_completions([dict(arithmetic_dataset[i]) for i in range(2) for _ in range(4)])
    truncated = torch.tensor(seen[-1])
    assert truncated.any()
    rewards = recorder.batches[-1]["rewards"]  # the shaped rewards the normalizer received
    assert (rewards[truncated] == 0.0).all() and (rewards[~truncated] == 5.0).all()


# ---------------------------------------------------------------------------------------------------- fault injection
def _flaky_reward(prompts, completions, **columns):
    """Raises whenever the batch holds a completion of a prompt about 0 (row-level bad input)."""
    if any("What is 0 +" in p for p in prompts):
        raise ValueError("cannot parse this one")
    return [1.0 + 0.1 * len(c) for c in completions]


HANG_RELEASE = threading.Event()


def _hanging_reward(prompts, completions, **columns):
    # stuck until the test releases it: no stray thread may still be running when the interpreter exits
    HANG_RELEASE.wait(timeout=60)
    return [1.0] * len(completions)


class FaultyVerifiers:
    @hookimpl
    def zrl_register_verifiers(self, register):
        register("flaky", lambda: _flaky_reward)
        register("hangs", lambda: _hanging_reward)


def test_a_verifier_failing_on_some_rows_scores_the_others(
    tmp_path, tiny_model_path, arithmetic_dataset, pm, caplog, recorder
):
    import logging

    pm.register_plugin(FaultyVerifiers(), name="faulty")
    trainer = _trainer(tmp_path, tiny_model_path, arithmetic_dataset, pm, verifiers=["flaky", "digits"], max_steps=1)
    trainer.model.train()
    inputs = [dict(arithmetic_dataset[i]) for i in range(2) for _ in range(4)]  # prompts about 0 and about 1
    with caplog.at_level(logging.WARNING, logger="zrl_plugins.framework.verifier_guard"):
        trainer._generate_and_score_completions(inputs)
    flaky = recorder.batches[-1]["rewards_per_func"][:, 0]
    assert torch.isnan(flaky[:4]).all() and not torch.isnan(flaky[4:]).any()  # only the bad rows are not scored
    messages = [r.getMessage() for r in caplog.records]
    assert any("verifier 'flaky'" in m and "raised on row 0" in m and "cannot parse this one" in m for m in messages)
    assert trainer._metrics["train"]["verifier/flaky/errors"][-1] == 4.0
    trainer.train()  # and training goes on


def test_a_hanging_verifier_times_out_and_training_goes_on(tmp_path, tiny_model_path, arithmetic_dataset, pm):
    import time

    pm.register_plugin(FaultyVerifiers(), name="faulty")
    trainer = _trainer(
        tmp_path,
        tiny_model_path,
        arithmetic_dataset,
        pm,
        verifiers=["hangs", "digits"],
        max_steps=1,
        verifier_timeout=0.5,
    )
    start = time.perf_counter()
    try:
        trainer.train()
    finally:
        HANG_RELEASE.set()
        for thread in threading.enumerate():
            if thread.name == "zrl-verifier-hangs":
                thread.join(timeout=10)
    assert time.perf_counter() - start < 20
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert log["verifier/hangs/timeouts"] == 8.0
    assert log["rewards/hangs/mean"] is None  # no row scored: TRL logs None rather than NaN
    assert log["rewards/digits/mean"] is not None


# ---------------------------------------------------------------------------------------------------- bad input
def test_empty_dataset(tmp_path, tiny_model_path, pm):
    from datasets import Dataset

    from zrl_plugins.framework.errors import DataError

    empty = Dataset.from_dict({"prompt": [], "answer": []})
    with pytest.raises(DataError, match="train_dataset is empty"):
        _trainer(tmp_path, tiny_model_path, empty, pm)


def test_missing_gold_column(tmp_path, tiny_model_path, pm):
    from datasets import Dataset

    from zrl_plugins.framework.errors import DataError

    data = Dataset.from_list([{"prompt": "What is 1 + 1?", "solution": "2"}] * 8)
    with pytest.raises(DataError, match=r"verifier 'last_number' needs the data set column\(s\) \['answer'\]"):
        _trainer(tmp_path, tiny_model_path, data, pm, verifiers=["last_number"])


def test_prompt_longer_than_the_context(tmp_path, tiny_model_path, arithmetic_dataset, pm):
    from datasets import Dataset

    from zrl_plugins.framework.errors import DataError

    rows = [dict(arithmetic_dataset[i]) for i in range(4)]
    rows[2]["prompt"] = "What is 1 + 1? " * 200  # far beyond the tiny model's 512 positions
    with pytest.raises(DataError, match="row 2 of train_dataset has a prompt of .* exceeds the model's context of 512"):
        _trainer(tmp_path, tiny_model_path, Dataset.from_list(rows), pm)


def test_completion_length_zero(tmp_path, tiny_model_path, arithmetic_dataset, pm):
    from zrl_plugins.framework.errors import ConfigError

    with pytest.raises(ConfigError, match="max_completion_length must be at least 1, got 0"):
        _trainer(tmp_path, tiny_model_path, arithmetic_dataset, pm, max_completion_length=0)
