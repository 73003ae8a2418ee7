"""Every boundary keeps its contract (issue: reward functions, plugin outputs, configs). Each test failed on the code
before the fix it names."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import tiny_config
from zrl_plugins import ZRLGRPOTrainer
from zrl_plugins.framework.errors import ComponentContractError
from zrl_plugins.framework.protocols import CorrectionOutput, PolicyLossOutput
from zrl_plugins.framework.rollout_correction import checked_correction
from zrl_plugins.framework.verifier_guard import VerifierHangError, check_rewards
from zrl_plugins.trainers import checkpoint, loss
from zrl_plugins.trainers.checkpoint import CheckpointError
from zrl_plugins.trainers.components import Selected
from zrl_plugins.trainers.run_folder import RunLock


# ---------------------------------------------------------------------------------------------------- reward functions
def sleeps_forever(prompts, completions, **kwargs):
    while True:
        time.sleep(0.05)


async def never_returns(prompts, completions, **kwargs):
    await asyncio.Event().wait()


def huge(prompts, completions, **kwargs):
    return [1e39] * len(completions)


def strings(prompts, completions, **kwargs):
    return ["good"] * len(completions)


def nothing(prompts, completions, **kwargs):
    return None


def as_tensor(prompts, completions, **kwargs):
    return torch.arange(len(completions), dtype=torch.float32)


def _trainer(tmp_path, model, data, funcs, **overrides):
    args = tiny_config(tmp_path, **{"verifier_timeout": 1.0, "verifier_max_consecutive_timeouts": 1, **overrides})
    return ZRLGRPOTrainer(model, funcs, args=args, train_dataset=data)


def test_a_reward_function_that_hangs_is_stopped_by_the_verifier_deadline(
    tmp_path, tiny_model_path, arithmetic_dataset
):
    """Was: training hung whatever verifier_timeout said (TRL's reward_funcs were appended unguarded)."""
    trainer = _trainer(tmp_path, tiny_model_path, arithmetic_dataset, [sleeps_forever])
    start = time.monotonic()
    with pytest.raises(VerifierHangError, match="sleeps_forever"):
        trainer.train()
    assert time.monotonic() - start < 60


def test_an_async_reward_function_that_never_returns_times_out(tmp_path, tiny_model_path, arithmetic_dataset):
    trainer = _trainer(
        tmp_path, tiny_model_path, arithmetic_dataset, [never_returns], verifier_max_consecutive_timeouts=2
    )
    (guarded,) = trainer.reward_funcs
    assert asyncio.run(guarded(prompts=["p", "q"], completions=["a", "b"])) == [None, None]  # rows not scored
    with pytest.raises(VerifierHangError, match="never_returns"):  # the second timeout in a row stops the run
        asyncio.run(guarded(prompts=["p", "q"], completions=["a", "b"]))


@pytest.mark.parametrize(
    ("func", "message"),
    [
        (huge, "1e\\+39 for row 0, beyond float32's range"),
        (strings, "'good' for row 0; rewards must be finite numbers"),
        (nothing, "returned None; it must return a list of 2 rewards"),
    ],
)
def test_bad_rewards_name_the_function(func, message, tmp_path, tiny_model_path, arithmetic_dataset):
    """Was: 1e39 trained on silently; strings gave "too many dimensions 'str'", None "'NoneType' object is not
    iterable" — neither named the function."""
    trainer = _trainer(tmp_path, tiny_model_path, arithmetic_dataset, [func])
    (guarded,) = trainer.reward_funcs
    with pytest.raises(ComponentContractError, match=f"{func.__name__}.*{message}"):
        guarded(prompts=["p", "q"], completions=["a", "b"])


def test_a_reward_function_keeps_its_name_and_tensor_rewards(tmp_path, tiny_model_path, arithmetic_dataset):
    trainer = _trainer(tmp_path, tiny_model_path, arithmetic_dataset, [as_tensor])
    assert trainer.reward_func_names == ["as_tensor"]  # TRL logs rewards/as_tensor/mean
    (guarded,) = trainer.reward_funcs
    assert guarded(prompts=["p", "q", "r"], completions=["a", "b", "c"]) == [0.0, 1.0, 2.0]


# ---------------------------------------------------------------------------------------------------- plugin outputs
LOGPS = st.one_of(
    st.floats(-120.0, 0.0), st.sampled_from([float("-inf"), float("nan"), -100.0, -1e-9, 0.0])
)  # what an inference engine reports: finite, far below π_old, -inf, unscored (NaN)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 6),
    st.data(),
)
def test_every_built_in_correction_stays_finite_for_any_behaviour_log_prob(rows, length, data):
    """Was: icepop returned NaN weights when log(π_old / π_behaviour) > 88 (inf · 0); the step then aborted."""
    from zrl_plugins.framework.plugins import get_plugin_manager

    pm = get_plugin_manager()
    old = torch.tensor(data.draw(st.lists(st.floats(-30.0, 0.0), min_size=rows * length, max_size=rows * length)))
    behaviour = torch.tensor(data.draw(st.lists(LOGPS, min_size=rows * length, max_size=rows * length)))
    mask = torch.tensor(data.draw(st.lists(st.sampled_from([0, 1]), min_size=rows * length, max_size=rows * length)))
    old, behaviour, mask = old.view(rows, length), behaviour.view(rows, length), mask.view(rows, length)
    for name in pm.names("rollout_correction"):
        out = pm.load_component("rollout_correction", name)(old, behaviour, mask)
        weights, _ = checked_correction(name, out, old, mask)  # raises on a broken contract
        assert torch.isfinite(weights).all(), name


def test_icepop_at_the_overflow_from_a_minus_infinity_behaviour_log_prob():
    from zrl_corrections.corrections import IcePop

    old = torch.tensor([[-1.0, -2.0, -0.5]])
    behaviour = torch.tensor([[-100.0, float("-inf"), -0.6]])  # log ratios 99, inf, 0.1
    out = IcePop()(old, behaviour, torch.ones(1, 3))
    torch.testing.assert_close(out.weights, torch.tensor([[0.0, 0.0, float(torch.exp(torch.tensor(0.1)))]]))


def _correction(weights, mask=None):
    class Correction:
        def __call__(self, old_logps, behaviour_logps, mask_):
            return CorrectionOutput(weights=weights, mask=mask)

    return Correction()(None, None, None)


@pytest.mark.parametrize(
    ("weights", "mask", "message"),
    [
        (-torch.ones(2, 3), None, "weight -1.0 at row 0, position 0; weights must be finite and >= 0"),
        (torch.ones(2, 3), 2 * torch.ones(2, 3), r"a mask with values \[2.0\]"),
        (torch.ones(2, 3), -torch.ones(2, 1), r"a mask with values \[-1.0\]"),
        (torch.full((2, 1), float("inf")), None, "weight inf at row 0"),
    ],
)
def test_correction_outputs_out_of_range_are_refused_naming_it(weights, mask, message):
    """Was: weights of -1 or a mask of 2 trained on with the loss flipped or doubled (masked_fraction 2.0 / -1.0)."""
    with pytest.raises(ComponentContractError, match=f"rollout_correction 'mine' .*{message}"):
        checked_correction("mine", _correction(weights, mask), torch.zeros(2, 3), torch.ones(2, 3))


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(1, 5),
    st.sampled_from(["token", "sequence"]),
    st.data(),
)
def test_a_correction_output_is_accepted_exactly_when_it_keeps_the_contract(rows, length, level, data):
    width = length if level == "token" else 1
    values = st.one_of(st.floats(-1e30, 1e30), st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0]))
    weights = torch.tensor(data.draw(st.lists(values, min_size=rows * width, max_size=rows * width))).view(rows, width)
    mask = torch.tensor(
        data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=rows * length, max_size=rows * length))
    )
    mask = mask.view(rows, length)
    counted = mask.bool() if width == length else mask.bool().any(-1, keepdim=True)
    valid = bool((~counted | (torch.isfinite(weights) & (weights >= 0))).all())
    if valid:
        accepted, _ = checked_correction("c", _correction(weights), torch.zeros(rows, length), mask)
        assert torch.isfinite(accepted[counted]).all()
    else:
        with pytest.raises(ComponentContractError, match="rollout_correction 'c'"):
            checked_correction("c", _correction(weights), torch.zeros(rows, length), mask)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(-(10**40), 10**40),
            st.booleans(),
            st.text(max_size=3),
        ),
        max_size=5,
    ),
    st.integers(0, 5),
)
def test_rewards_are_numbers_or_none_or_a_contract_error_naming_the_source(rewards, n):
    try:
        checked = check_rewards("fn", "origin", rewards, n)
    except ComponentContractError as error:
        assert "'fn' (origin)" in str(error)
        return
    assert len(checked) == n
    assert all(r is None or (isinstance(r, float | int) and abs(r) <= 3.5e38) for r in checked)


class _Loss:
    def __init__(self, make):
        self.make = make

    def __call__(self, logps, old_logps, advantages, mask, sampling_ratio):
        return self.make(logps)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda lp: PolicyLossOutput(per_token_loss=lp[:1], ratio=torch.ones_like(lp)),
            r"per_token_loss of shape \(1, 5\)",
        ),
        (lambda lp: PolicyLossOutput(per_token_loss=lp[:, :-1], ratio=torch.ones_like(lp)), r"shape \(4, 4\)"),
        (lambda lp: PolicyLossOutput(per_token_loss=lp.detach(), ratio=torch.ones_like(lp)), "without gradient"),
        (lambda lp: PolicyLossOutput(per_token_loss=-lp, ratio=torch.ones(4, 5, dtype=torch.long)), "ratio of dtype"),
    ],
)
def test_a_policy_loss_output_is_checked_where_the_core_receives_it(make, message):
    """Was: a 1 x T loss was broadcast over every row; a detached one gave torch's bare "element 0 of tensors does
    not require grad"; a wrong length was blamed on the normalizer's aggregate."""
    from zrl_plugins.framework.plugins import get_plugin_manager

    logps = torch.randn(4, 5, requires_grad=True)
    selected = Selected("policy_loss", "mine", _Loss(make))
    with pytest.raises(ComponentContractError, match=f"policy_loss 'mine' .*{message}"):
        loss.policy_loss(
            get_plugin_manager(), selected, logps, logps.detach(), torch.ones(4, 1), torch.ones(4, 5), None
        )


# ---------------------------------------------------------------------------------------------------- configs
def test_one_verifier_name_as_a_string(tmp_path):
    """Was: `verifiers: last_number` gave "unknown verifier 'l'" (the string iterated letter by letter)."""
    assert tiny_config(tmp_path, verifiers="last_number").verifiers == ["last_number"]
    assert tiny_config(tmp_path, verifiers="last_number, countdown").verifiers == ["last_number", "countdown"]
    from zrl_plugins.trainers.config import parse_config

    config = tmp_path / "run.yaml"
    config.write_text("output_dir: out\nuse_cpu: true\nbf16: false\nverifiers: last_number\n")
    from zrl_plugins import ZRLConfig

    (parsed,) = parse_config([ZRLConfig], ["--config", str(config)])
    assert parsed.verifiers == ["last_number"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("beta", -0.04, "beta must be a finite number >= 0"),
        ("temperature", 0.0, "temperature must be > 0"),
        ("learning_rate", float("nan"), "learning_rate must be a finite number >= 0"),
    ],
)
def test_values_that_would_fail_late_are_refused_in_the_config(option, value, message, tmp_path):
    """Was: a negative beta trained with a KL bonus; temperature 0 and a NaN learning rate failed only after the
    model loaded (temperature 0 after the held-out evaluation)."""
    from zrl_plugins.framework.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, **{option: value})


def test_fewer_prompts_than_one_generation_batch_is_refused_before_loading(
    tmp_path, tiny_model_path, arithmetic_dataset
):
    """Was: gradient_accumulation_steps larger than the data trained 0 steps and exited 0."""
    from zrl_plugins.framework.errors import DataError

    args = tiny_config(tmp_path, gradient_accumulation_steps=16)  # 8 x 16 / 4 = 32 prompts per generation batch
    with pytest.raises(DataError, match="train_dataset has 16 prompts; one generation batch takes 32"):
        ZRLGRPOTrainer(tiny_model_path, lambda completions, **kw: [0.0] * len(completions), args=args,
                       train_dataset=arithmetic_dataset)  # fmt: skip


# ---------------------------------------------------------------------------------------------------- output folders
def _saving(tmp_path, model, data, steps=2, **overrides):
    from tests.helpers import char_count_reward

    args = tiny_config(tmp_path, max_steps=steps, save_strategy="steps", save_steps=1, **overrides)
    return ZRLGRPOTrainer(model, char_count_reward, args=args, train_dataset=data)


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path, tiny_model_path, arithmetic_dataset):
    """Was: two runs on one output_dir mixed a checkpoint silently (one's weights beside the other's state)."""
    busy = pytest.raises(CheckpointError, match=r"in use by another run \(pid \d+ on .*, run run-a")
    with RunLock(str(tmp_path / "out"), "run-a"), busy:  # run A is writing the folder
        _saving(tmp_path, tiny_model_path, arithmetic_dataset).train()
    _saving(tmp_path, tiny_model_path, arithmetic_dataset).train()  # A is done: the folder is free


def test_a_checkpoint_changed_after_it_was_written_is_refused_naming_the_file(
    tmp_path, tiny_model_path, arithmetic_dataset
):
    """Another run's weights in this run's checkpoint (same size, other bytes): its SHA-256 no longer matches."""
    _saving(tmp_path, tiny_model_path, arithmetic_dataset).train()
    out = tmp_path / "out"
    weights = out / "checkpoint-1" / "model.safetensors"
    shutil.copy(out / "checkpoint-2" / "model.safetensors", weights)
    resumed = _saving(tmp_path, tiny_model_path, arithmetic_dataset, steps=3)
    with pytest.raises(CheckpointError, match=r"checkpoint-1 changed after it was written: model.safetensors"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-1"))


def test_a_fresh_run_in_a_folder_with_checkpoints_is_refused_unless_told_to_overwrite(
    tmp_path, tiny_model_path, arithmetic_dataset
):
    """Was: a fresh run with save_total_limit=1 deleted each of its checkpoints right after writing it, keeping the
    older run's checkpoint-3, which resume_from_checkpoint=True then continued."""
    _saving(tmp_path, tiny_model_path, arithmetic_dataset, steps=3).train()  # the older run: checkpoint-1..3
    fresh = _saving(tmp_path, tiny_model_path, arithmetic_dataset, save_total_limit=1)
    with pytest.raises(
        CheckpointError, match=r"already holds checkpoints \(checkpoint-1, checkpoint-2, checkpoint-3\)"
    ):
        fresh.train()
    fresh = _saving(tmp_path, tiny_model_path, arithmetic_dataset, save_total_limit=1, overwrite_output_dir=True)
    fresh.train()
    found = checkpoint.scan(str(tmp_path / "out"))
    assert [f.rsplit("/", 1)[1] for f in found.complete] == ["checkpoint-2"]  # the new run's newest, kept
    assert checkpoint.read_manifest(found.complete[0])["run_id"] == fresh._zrl_run_id


def test_rotation_deletes_only_this_run_s_checkpoints(tmp_path):
    for step, run in ((1, "old"), (2, "old"), (3, "new"), (4, "new"), (5, "new")):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "zrl_state_0.pt").write_bytes(b"x")
        checkpoint.write_manifest(str(folder), step, 1, {}, run_id=run)
    deleted = checkpoint.rotate(str(tmp_path), 1, run_id="new")
    assert sorted(d.rsplit("-", 1)[1] for d in deleted) == ["3", "4"]
    assert [f.rsplit("-", 1)[1] for f in checkpoint.scan(str(tmp_path)).complete] == ["1", "2", "5"]


def test_a_trl_checkpoint_is_named_as_such_and_resumes_with_resume_override(
    tmp_path, tiny_model_path, arithmetic_dataset
):
    """Was: refused with "the save did not finish"."""
    from trl import GRPOConfig, GRPOTrainer

    from tests.helpers import TINY_TRAINING, char_count_reward

    trl_args = GRPOConfig(output_dir=str(tmp_path / "trl"), **{**TINY_TRAINING, "save_strategy": "steps"})
    trl_args.save_steps, trl_args.max_steps = 1, 1
    GRPOTrainer(tiny_model_path, char_count_reward, args=trl_args, train_dataset=arithmetic_dataset).train()
    target = str(tmp_path / "trl" / "checkpoint-1")
    with pytest.raises(CheckpointError, match="it is not a zrl checkpoint .*resume_override=True loads its model"):
        _saving(tmp_path, tiny_model_path, arithmetic_dataset).train(resume_from_checkpoint=target)
    resumed = _saving(tmp_path, tiny_model_path, arithmetic_dataset, resume_override=True)
    with pytest.warns(UserWarning, match="not a zrl checkpoint"):
        resumed.train(resume_from_checkpoint=target)
    assert resumed.state.global_step == 2  # one step resumed from TRL's, one trained


def test_resuming_on_other_data_is_said(tmp_path, tiny_model_path, arithmetic_dataset, caplog):
    _saving(tmp_path, tiny_model_path, arithmetic_dataset).train()
    fewer = arithmetic_dataset.select(range(12))
    resumed = _saving(tmp_path, tiny_model_path, fewer, steps=3)
    with caplog.at_level(logging.WARNING, logger="zrl_plugins.trainers.checkpointing"):
        resumed.train(resume_from_checkpoint=True)
    assert "other data than it trained on (rows 16 -> 12" in caplog.text


# ---------------------------------------------------------------------------------------------------- commands
def _eval(tiny_model_path, tmp_path, *extra):
    from zrl_plugins.apps.cli import main

    return main(["eval", "--model", tiny_model_path, "--max_new_tokens", "4", *extra])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n", "0"], "--n must be at least 1"),  # was: IndexError
        (["--n", "-5"], "--n must be at least 1"),  # was: 436 problems, training ones included
        (["--k", "-3"], "--k must be 0"),  # was: greedy only, silently
    ],
)
def test_zrl_eval_refuses_bad_counts_before_loading(extra, message, tiny_model_path, tmp_path, capsys):
    assert _eval(tiny_model_path, tmp_path, *extra) == 2
    assert message in capsys.readouterr().err


def test_zrl_eval_checks_its_output_folder_first(tiny_model_path, tmp_path, capsys):
    """Was: an unwritable output folder failed only after the whole evaluation."""
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert _eval(tiny_model_path, tmp_path, "--n", "2", "--output", str(blocked / "out")) == 2
    assert "is not writable" in capsys.readouterr().err


def test_zrl_eval_on_a_model_without_a_chat_template(tiny_model_path, tmp_path, caplog):
    """Was: `zrl eval --model tiny` (named in its own help) crashed on the missing chat template."""
    from zrl_plugins.apps import evaluation

    evaluation._warn_no_chat_template.cache_clear()  # warned once per process: an earlier test may have seen it
    with caplog.at_level(logging.WARNING, logger="zrl_plugins.apps.evaluation"):
        assert _eval(tiny_model_path, tmp_path, "--n", "2", "--output", str(tmp_path / "o")) == 0
    assert "has no chat template" in caplog.text and (tmp_path / "o" / "eval.json").exists()


def test_demo_refuses_zero_held_out_problems():
    from zrl_plugins.apps.demo import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--n_eval", "0"])


def test_zrl_plugins_reports_a_duplicate_name_without_a_traceback(monkeypatch, capsys):
    from zrl_plugins.apps import cli
    from zrl_plugins.framework.errors import DuplicateComponentError

    def clash():
        raise DuplicateComponentError("normalizer 'grpo' is registered twice: by zrl-plugins and by clash-dist 1.0")

    monkeypatch.setattr(cli, "get_plugin_manager", clash)
    assert cli.main(["plugins"]) == 2
    assert "zrl plugins: normalizer 'grpo' is registered twice" in capsys.readouterr().err


def test_a_slow_plugin_import_is_named_with_its_time(monkeypatch, caplog):
    import importlib.metadata

    from zrl_plugins.framework import plugins

    class SlowEntryPoint:
        name, value = "slowpoke", "slowpoke.plugin:Plugin"
        dist = type("Dist", (), {"name": "slowpoke-dist", "version": "0.1"})()

        def load(self):
            time.sleep(0.05)
            return type("Plugin", (), {})()

    monkeypatch.setattr(plugins, "SLOW_IMPORT_SECONDS", 0.01)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [SlowEntryPoint()])
    with caplog.at_level(logging.WARNING, logger="zrl_plugins.framework.plugins"):
        plugins.ZRLPluginManager()
    assert "zrl plugin 'slowpoke' from distribution 'slowpoke-dist' took" in caplog.text


# ---------------------------------------------------------------------------------------------------- isolation
def test_process_isolation_frees_a_call_stuck_in_c_code(tmp_path, tiny_model_path, arithmetic_dataset):
    """Left from the last round: a sync verifier stuck inside C code kept its thread. Under
    verifier_isolation='process' the deadline kills its worker; the next call gets a new one."""
    import os

    from tests.verifier_workers import reports_its_process, stuck_in_c

    trainer = _trainer(
        tmp_path,
        tiny_model_path,
        arithmetic_dataset,
        [stuck_in_c, reports_its_process],
        verifier_isolation="process",
        verifier_max_consecutive_timeouts=3,
    )
    stuck, reporter = trainer.reward_funcs
    assert stuck(prompts=["p"], completions=["ok"]) == [2.0]
    worker = stuck.process.pid
    start = time.monotonic()
    assert stuck(prompts=["p"], completions=["hang"]) == [None]  # timed out, row not scored
    assert time.monotonic() - start < 10
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)  # the worker is gone, with whatever it held
    assert stuck(prompts=["p"], completions=["fine"]) == [4.0] and stuck.process.pid != worker
    logged = []
    (pid,) = reporter(prompts=["p"], completions=["x"], log_metric=lambda k, v: logged.append((k, v)))
    assert pid != os.getpid() and ("verifier/pid", pid) in logged  # metrics logged in the worker reach TRL
    for guard in (stuck, reporter):
        guard.process.stop()


def test_process_isolation_refuses_what_cannot_reach_a_worker(tmp_path, tiny_model_path, arithmetic_dataset):
    from zrl_plugins.framework.errors import ConfigError

    with pytest.raises(ConfigError, match="verifier_isolation='process': verifier '<lambda>' does not pickle"):
        _trainer(tmp_path, tiny_model_path, arithmetic_dataset, [lambda completions, **k: [0.0] * len(completions)],
                 verifier_isolation="process")  # fmt: skip
    with pytest.raises(ConfigError, match="verifier_isolation must be 'thread' or 'process'"):
        tiny_config(tmp_path, verifier_isolation="fork")


def test_training_with_isolated_verifiers(tmp_path, tiny_model_path, arithmetic_dataset):
    """A verifier by name and a reward function, both in worker processes, through TRL's reward call (its columns:
    trainer_state, log_extra, log_metric) for two steps."""
    from tests.verifier_workers import reports_its_process

    args = tiny_config(tmp_path, verifiers=["last_number"], verifier_isolation="process", max_steps=2)
    trainer = ZRLGRPOTrainer(tiny_model_path, [reports_its_process], args=args, train_dataset=arithmetic_dataset)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all("rewards/last_number/mean" in h for h in logged)
    assert logged[-1]["rewards/reports_its_process/mean"] not in (0.0, float(__import__("os").getpid()))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.data())
def test_every_built_in_kl_penalty_is_finite_and_per_token(rows, length, data):
    """Any finite log-probs, however far apart (-120 against 0), give a per-token KL of the batch's shape and never
    NaN (k3's exp(Δ) may overflow to inf there, as in TRL: the step's numerics, which the skip guard handles)."""
    from zrl_plugins.framework.plugins import get_plugin_manager

    pm = get_plugin_manager()
    values = st.lists(st.floats(-120.0, 0.0), min_size=rows * length, max_size=rows * length)
    logps = torch.tensor(data.draw(values)).view(rows, length)
    ref = torch.tensor(data.draw(values)).view(rows, length)
    for name in pm.names("kl_penalty"):
        penalty = pm.load_component("kl_penalty", name, beta=0.1)
        kl = loss.checked_kl(name, penalty.per_token(logps, ref), logps, ref)  # raises on a broken contract
        assert not torch.isnan(kl).any(), name


def test_a_kl_penalty_output_is_checked_naming_it():
    logps, ref = torch.zeros(3, 4), torch.zeros(3, 4)
    with pytest.raises(ComponentContractError, match=r"kl_penalty 'mine'.per_token returned \(3, 1\); expected"):
        loss.checked_kl("mine", torch.zeros(3, 1), logps, ref)
    with pytest.raises(ComponentContractError, match="NaN from finite log-probs"):
        loss.checked_kl("mine", torch.full((3, 4), float("nan")), logps, ref)
