"""Skipped iterations (zrl_plugins/trainers/numerics.py): a non-finite step changes nothing and training goes on; a
streak stops the run with a numerics error; plugin contract errors stay contract errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import char_count_reward, launch_two_cpu_processes, tiny_config
from zrl_plugins import ZRLGRPOTrainer
from zrl_plugins.framework.errors import ComponentContractError
from zrl_plugins.trainers.numerics import NumericalInstabilityError, SkipGuard


def test_guard_counts_skips_and_stops_a_streak():
    guard = SkipGuard("skip", max_consecutive=3)
    assert not guard.decide(True, 1, 1e-5)
    guard.note_fault("the training loss is nan")
    with pytest.warns(UserWarning, match="step 2: the training loss is nan; the optimizer step was skipped"):
        assert guard.decide(False, 2, 1e-5)
    assert guard.skip_scheduler and (guard.skipped_total, guard.consecutive) == (1, 1)
    assert not guard.decide(True, 3, 1e-5) and guard.consecutive == 0  # a good step ends the streak
    with pytest.warns(UserWarning):
        guard.decide(False, 4, 1e-5)
        guard.decide(False, 5, 1e-5)
    with pytest.raises(NumericalInstabilityError, match="3 optimizer steps in a row.*not of a plugin.*lower the lea"):
        guard.decide(False, 6, 1e-5)
    with pytest.raises(NumericalInstabilityError, match="step 1: .*nonfinite_policy='raise'"):
        SkipGuard("raise").decide(False, 1, 1e-5)
    restored = SkipGuard()
    restored.load_state_dict(guard.state_dict())
    assert (restored.skipped_total, restored.consecutive) == (guard.skipped_total, guard.consecutive)


class Snapshots:
    """Weights, optimizer step counts and learning rate around every optimizer step."""

    def __init__(self, trainer):
        from transformers import TrainerCallback

        outer = self
        self.before, self.after = {}, {}

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                outer.before[state.global_step + 1] = outer.take(trainer)

            def on_step_end(self, args, state, control, **kwargs):
                outer.after[state.global_step] = outer.take(trainer)

        trainer.add_callback(Callback())

    @staticmethod
    def take(trainer):
        params = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
        optimizer = trainer.optimizer
        steps = [float(s["step"]) for s in optimizer.state.values() if "step" in s] if optimizer else []
        scheduler = trainer.lr_scheduler.last_epoch if trainer.lr_scheduler is not None else None
        return params, sorted(steps), scheduler


def _poison(trainer, layer, step):
    """Multiply ``layer``'s output by NaN in the training forward of optimizer step ``step`` (generation, reference
    and old log-probs run without gradient and stay clean)."""

    def hook(module, inputs, output):
        if torch.is_grad_enabled() and trainer.state.global_step == step - 1:
            return output * float("nan")
        return output

    return layer.register_forward_hook(hook)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_nan_step_is_skipped_and_training_goes_on(accumulation, tmp_path, tiny_model_path, arithmetic_dataset):
    args = tiny_config(
        tmp_path,
        max_steps=4,
        gradient_accumulation_steps=accumulation,
        lr_scheduler_type="linear",
        per_device_train_batch_size=8 // accumulation * accumulation,
    )
    trainer = ZRLGRPOTrainer(tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset)
    _poison(trainer, trainer.model.model.layers[0], step=2)
    snaps = Snapshots(trainer)
    with pytest.warns(UserWarning, match="step 2: the .* not finite|step 2: the .*nan"):
        trainer.train()
    params_before, opt_before, sched_before = snaps.before[2]
    params_after, opt_after, sched_after = snaps.after[2]
    assert torch.equal(params_before, params_after)  # no weight change
    assert opt_before == opt_after and sched_before == sched_after  # no optimizer-state or scheduler change
    assert not torch.equal(snaps.before[3][0], snaps.after[3][0])  # the next step trains again
    assert torch.isfinite(snaps.after[4][0]).all()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["train/skipped_steps"] for h in logs] == [0.0, 1.0, 1.0, 1.0]
    assert trainer.lr_scheduler.last_epoch == 3  # 4 steps, one skipped


def test_ppo_critic_nan_skips_the_whole_step(tmp_path, tiny_model_path, arithmetic_dataset):
    from tests.test_ppo import _ppo_config
    from zrl_plugins import ZRLPPOTrainer

    args = _ppo_config(tmp_path, max_steps=3)
    trainer = ZRLPPOTrainer(tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset)
    _poison(trainer, trainer.critic.model.layers[0], step=2)
    snaps = Snapshots(trainer)
    with pytest.warns(UserWarning, match="step 2: "):
        trainer.train()
    assert torch.equal(snaps.before[2][0], snaps.after[2][0])  # actor and critic (attached) both unchanged
    assert torch.isfinite(snaps.after[3][0]).all() and not torch.equal(snaps.before[3][0], snaps.after[3][0])
    assert [h["train/skipped_steps"] for h in trainer.state.log_history if "loss" in h] == [0.0, 1.0, 1.0]


def test_raise_policy_and_streaks_stop_with_a_numerics_error(tmp_path, tiny_model_path, arithmetic_dataset):
    trainer = ZRLGRPOTrainer(
        tiny_model_path,
        char_count_reward,
        train_dataset=arithmetic_dataset,
        args=tiny_config(tmp_path / "a", max_steps=3, nonfinite_policy="raise"),
    )
    _poison(trainer, trainer.model.model.layers[0], step=2)
    with pytest.raises(NumericalInstabilityError, match="step 2: .*not of a plugin"):
        trainer.train()

    trainer = ZRLGRPOTrainer(
        tiny_model_path,
        char_count_reward,
        train_dataset=arithmetic_dataset,
        args=tiny_config(tmp_path / "b", max_steps=5, max_consecutive_skips=2),
    )
    for step in (2, 3):
        _poison(trainer, trainer.model.model.layers[0], step=step)
    with pytest.warns(UserWarning), pytest.raises(NumericalInstabilityError, match="step 3: .*2 optimizer steps"):
        trainer.train()


def test_a_normalizer_that_makes_nan_from_finite_losses_is_still_a_contract_error(
    tmp_path, tiny_model_path, arithmetic_dataset
):
    from zrl_plugins import hookimpl
    from zrl_plugins.builtins.normalizers import GRPONormalizer
    from zrl_plugins.framework.plugins import ZRLPluginManager

    class NaNAggregate(GRPONormalizer):
        def aggregate(self, per_token_loss, mask, ctx):
            return per_token_loss.sum() * float("nan")

    class Plugin:
        @hookimpl
        def zrl_register_normalizers(self, register):
            register("nan_aggregate", NaNAggregate)

    pm = ZRLPluginManager()
    pm.register_plugin(Plugin(), name="nan-plugin")
    trainer = ZRLGRPOTrainer(
        tiny_model_path,
        char_count_reward,
        train_dataset=arithmetic_dataset,
        plugin_manager=pm,
        args=tiny_config(tmp_path, max_steps=1, normalizer="nan_aggregate"),
    )
    with pytest.raises(ComponentContractError, match="nan_aggregate.*from finite per-token losses"):
        trainer.train()


@pytest.mark.slow
def test_two_processes_skip_together(tiny_model_path, tmp_path):
    script = Path(__file__).parent / "scripts" / "nan_two_processes.py"
    result = launch_two_cpu_processes(script, tiny_model_path, str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["finite"] and ranks[1]["finite"]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # both skipped the same step: the replicas are identical
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [0.0, 1.0, 1.0]
