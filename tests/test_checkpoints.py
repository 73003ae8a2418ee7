"""Checkpoints that survive: safe loading, the completion marker, resume from the newest complete checkpoint, the
recorded setup, full disks and corrupt state files (zrl_plugins/trainers/checkpoint.py, docs/checkpoints.md)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
from collections import namedtuple

import pytest
import torch
from datasets import Dataset

from tests.helpers import char_count_reward, rehash_checkpoint, tiny_config
from zrl_plugins import PluginError, ZRLGRPOTrainer, hookimpl
from zrl_plugins.framework.plugins import ZRLPluginManager
from zrl_plugins.trainers import checkpoint, checkpointing
from zrl_plugins.trainers.checkpoint import CheckpointError, ResumeMismatchError

ADAPTIVE = {"controller": "adaptive", "controller_kwargs": {"target_kl": 0.001, "horizon": 10}}
SETUP = dict(kl_penalty="k1", beta=0.05, kl_penalty_kwargs=ADAPTIVE, save_strategy="steps", save_steps=1)
DATA = [{"prompt": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(16)]


def _trainer(run_dir, model_path, pm=None, **overrides) -> ZRLGRPOTrainer:
    args = tiny_config(run_dir, **{**SETUP, **overrides})
    return ZRLGRPOTrainer(
        model_path, char_count_reward, args=args, train_dataset=Dataset.from_list(DATA), plugin_manager=pm
    )


@pytest.fixture(scope="module")
def trained(tiny_model_path, tmp_path_factory):
    """One adaptive-KL run of 2 steps with a checkpoint at each; tests copy it before they change it."""
    run = tmp_path_factory.mktemp("trained")
    trainer = _trainer(run, tiny_model_path, max_steps=2)
    trainer.train()
    return run / "out", trainer.kl_penalty.controller.beta


@pytest.fixture
def run(trained, tmp_path):
    """(output_dir, β after step 2) of a private copy of the trained run."""
    source, beta = trained
    shutil.copytree(source, tmp_path / "out")
    return tmp_path / "out", beta


class _Probe:
    """Records, when a resume loads a checkpoint, which one and the KL coefficient the components were restored to."""

    def __init__(self):
        self.loaded = []

    @hookimpl
    def zrl_on_load_checkpoint(self, trainer, checkpoint_dir, state):
        self.loaded.append((os.path.basename(checkpoint_dir), trainer.kl_penalty.controller.beta))


def _probed() -> tuple[ZRLPluginManager, _Probe]:
    pm, probe = ZRLPluginManager(), _Probe()
    pm.register_plugin(probe, name="probe")
    return pm, probe


def _beta_in(checkpoint_dir) -> float:
    return checkpoint.load_state(checkpoint_dir / "zrl_state_0.pt")["components"]["kl_penalty"]["beta"]


# ------------------------------------------------------------------------------------------------ 1: safe loading
class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_state_file_carrying_code_does_not_run_it_on_resume(run, tiny_model_path):
    out, _ = run
    marker = out.parent / "PWNED"
    state_file = out / "checkpoint-2" / "zrl_state_0.pt"
    state = torch.load(state_file, weights_only=True)
    state["plugins"]["evil"] = _RunsCode(marker)
    torch.save(state, state_file)  # a checkpoint shared by someone else: complete, with a hostile state file
    rehash_checkpoint(state_file.parent)  # ... whose manifest matches it

    resumed = _trainer(out.parent, tiny_model_path, max_steps=3)
    with pytest.raises(CheckpointError) as info:
        resumed.train(resume_from_checkpoint=True)
    message = str(info.value)
    assert str(state_file) in message and "system" in message and "weights_only=True" in message
    assert "checkpoint-1" in message  # the fix: the newest complete checkpoint besides this one
    assert not marker.exists(), "resuming ran the code hidden in the checkpoint"
    assert resumed.state.global_step == 0


class _Opaque:
    pass


class _UnsafeObserver:
    @hookimpl
    def zrl_on_save_checkpoint(self, trainer, checkpoint_dir, state):
        state["opaque"] = {"fine": torch.zeros(2), "bad": [1, _Opaque()]}


def test_state_a_safe_load_would_refuse_is_an_error_at_save_naming_plugin_and_type(tmp_path, tiny_model_path):
    pm = ZRLPluginManager()
    pm.register_plugin(_UnsafeObserver(), name="opaque")
    trainer = _trainer(tmp_path, tiny_model_path, pm=pm, max_steps=1)
    with pytest.raises(CheckpointError, match=r"plugin 'opaque'.*test_checkpoints\._Opaque.*\['bad'\]\[1\]"):
        trainer.train()
    assert checkpoint.incomplete_reason(str(tmp_path / "out" / "checkpoint-1")) is not None


def test_validate_state_names_the_component_and_accepts_plain_values():
    checkpoint.validate_state("x", {"a": torch.ones(1), "b": [1, 2.5, "s", None, b"x", (True,)], "c": {3}})
    with pytest.raises(CheckpointError, match=r"plugin 'p' \(rollout 'r'\.state_dict\(\)\).*random\.Random.*\['rng'\]"):
        import random

        checkpoint.validate_state("plugin 'p' (rollout 'r'.state_dict())", {"rng": random.Random(0)})


# ------------------------------------------------------------------------------------------------ 2 + 3: atomicity
class _FailsOnSecondSave:
    calls = 0

    @hookimpl
    def zrl_on_save_checkpoint(self, trainer, checkpoint_dir, state):
        self.calls += 1
        if self.calls == 2:
            raise OSError("quota exceeded on the metrics server")


def test_a_save_that_raises_leaves_an_incomplete_checkpoint_and_keeps_the_last_complete_one(
    tmp_path, tiny_model_path, caplog
):
    pm = ZRLPluginManager()
    pm.register_plugin(_FailsOnSecondSave(), name="flaky")
    first = _trainer(tmp_path, tiny_model_path, pm=pm, max_steps=3, save_total_limit=1)
    with pytest.raises(PluginError, match="flaky.*zrl_on_save_checkpoint"):
        first.train()
    out = tmp_path / "out"
    assert checkpoint.incomplete_reason(str(out / "checkpoint-1")) is None  # not rotated away
    assert "zrl_checkpoint.json is missing" in checkpoint.incomplete_reason(str(out / "checkpoint-2"))
    beta_1 = _beta_in(out / "checkpoint-1")
    assert beta_1 != pytest.approx(0.05)  # the controller moved: restoring it matters

    pm, probe = _probed()
    resumed = _trainer(tmp_path, tiny_model_path, pm=pm, max_steps=2)
    with pytest.warns(UserWarning, match=r"skipping incomplete checkpoint .*checkpoint-2 .*resuming from .*-1"):
        resumed.train(resume_from_checkpoint=True)
    assert probe.loaded == [("checkpoint-1", beta_1)]
    assert resumed.kl_penalty.controller.beta == pytest.approx(first.kl_penalty.controller.beta)  # same step 2


def test_rotation_keeps_the_newest_complete_checkpoints_and_drops_dead_incomplete_ones(tmp_path):
    def make(step, complete):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "zrl_state_0.pt").write_bytes(b"x")
        if complete:
            checkpoint.write_manifest(str(folder), step, 1, {})

    for step, complete in [(1, True), (2, False), (3, True), (4, True), (5, False)]:
        make(step, complete)
    deleted = checkpoint.rotate(str(tmp_path), save_total_limit=1)
    assert sorted(os.path.basename(f) for f in deleted) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4", "checkpoint-5"]  # 5 may still be being written
    assert checkpoint.scan(str(tmp_path)).newest_complete.endswith("checkpoint-4")


def test_an_explicit_incomplete_or_corrupt_checkpoint_is_an_error_naming_the_file(run, tiny_model_path):
    out, _ = run
    (out / "checkpoint-2" / "trainer_state.json").write_text('{"global_step": 2, "log_hist')
    resumed = _trainer(out.parent, tiny_model_path, max_steps=3)
    expected = r"checkpoint-2 is incomplete: trainer_state.json changed since it was written.*newest complete .*-1"
    with pytest.raises(CheckpointError, match=expected):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    (out / "checkpoint-1" / "optimizer.pt").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint-1 is incomplete: optimizer.pt is missing.*No checkpoint"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-1"))
    with pytest.raises(CheckpointError, match=r"no complete checkpoint in .*checkpoint-1: optimizer.pt is missing"):
        resumed.train(resume_from_checkpoint=True)


# ------------------------------------------------------------------------------------------------ 4: honest resume
def test_resuming_with_other_components_or_beta_is_an_error_showing_both(run, tiny_model_path):
    out, _ = run
    other_kl = _trainer(out.parent, tiny_model_path, max_steps=2, kl_penalty="k3", beta=0.2, kl_penalty_kwargs={})
    with pytest.raises(ResumeMismatchError) as info:
        other_kl.train(resume_from_checkpoint=True)
    message = str(info.value)
    assert (
        "beta: checkpoint 0.05 -> this run 0.2" in message and "kl_penalty: checkpoint 'k1' -> this run 'k3'" in message
    )
    assert "resume_override" in message
    other_beta = _trainer(out.parent, tiny_model_path, max_steps=2, beta=0.2)
    with pytest.raises(ResumeMismatchError, match=r"^[^;]*beta: checkpoint 0.05 -> this run 0.2\. "):
        other_beta.train(resume_from_checkpoint=True)
    other_normalizer = _trainer(out.parent, tiny_model_path, max_steps=2, normalizer="dr_grpo")
    with pytest.raises(ResumeMismatchError, match=r"normalizer: checkpoint 'grpo' -> this run 'dr_grpo'"):
        other_normalizer.train(resume_from_checkpoint=True)
    assert other_kl.state.global_step == other_beta.state.global_step == 0


def test_resume_override_takes_the_new_beta_and_logs_what_changed(run, tiny_model_path, caplog):
    out, beta_2 = run
    assert beta_2 != pytest.approx(0.05)
    pm, probe = _probed()
    _trainer(out.parent, tiny_model_path, pm=pm, max_steps=3).train(resume_from_checkpoint=str(out / "checkpoint-2"))
    new_beta = _trainer(out.parent, tiny_model_path, pm=pm, max_steps=3, beta=0.2, resume_override=True)
    with caplog.at_level(logging.WARNING, logger="zrl_plugins.trainers.grpo"):
        new_beta.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert "beta: checkpoint 0.05 -> this run 0.2" in caplog.text
    new_kl = _trainer(
        out.parent, tiny_model_path, pm=pm, max_steps=3, kl_penalty="k3", kl_penalty_kwargs={}, resume_override=True
    )
    new_kl.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    # the same setup restores β; a new β replaces it; a replaced controller starts from its initial state
    assert probe.loaded == [("checkpoint-2", beta_2), ("checkpoint-2", 0.2), ("checkpoint-2", 0.05)]


# ------------------------------------------------------------------------------------------------ 10: full disk
def _raise_on_save(exc):
    def save(*args, **kwargs):
        raise exc

    return save


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1000512 vs 1000404"),
        OSError(errno.ENOSPC, "No space left on device"),
    ],
    ids=["torch zip writer", "ENOSPC"],
)
def test_a_full_disk_is_reported_as_such_and_the_half_written_checkpoint_is_skipped(
    error, tmp_path, tiny_model_path, monkeypatch
):
    trainer = _trainer(tmp_path, tiny_model_path, max_steps=2)
    real_write = checkpointing.write_state  # what the trainer's save calls

    def write_state(path, state):
        if "checkpoint-2" in str(path):
            monkeypatch.setattr(torch, "save", _raise_on_save(error))
        return real_write(path, state)

    monkeypatch.setattr(checkpointing, "write_state", write_state)
    with pytest.raises(CheckpointError, match=r"the disk is full: could not write checkpoint .*checkpoint-2 \("):
        trainer.train()
    monkeypatch.undo()
    pm, probe = _probed()
    resumed = _trainer(tmp_path, tiny_model_path, pm=pm, max_steps=2)
    with pytest.warns(UserWarning, match="skipping incomplete checkpoint .*checkpoint-2"):
        resumed.train(resume_from_checkpoint=True)
    assert [name for name, _ in probe.loaded] == ["checkpoint-1"]


def test_too_little_free_space_stops_before_writing(tmp_path, tiny_model_path, monkeypatch):
    trainer = _trainer(tmp_path, tiny_model_path, max_steps=1)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(CheckpointError, match=r"not enough disk space for a checkpoint in .*out: it needs at least"):
        trainer.train()
    assert not (tmp_path / "out" / "checkpoint-1").exists()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)  # lazily: a failed save may still hold a file open


def test_a_real_full_disk(tiny_tmpfs, tiny_model_path):
    trainer = _trainer(tiny_tmpfs, tiny_model_path, max_steps=4)
    with pytest.raises(CheckpointError, match=r"disk"):
        trainer.train()
    found = checkpoint.scan(str(tiny_tmpfs / "out"))
    assert found.newest_complete is not None
    assert trainer.state.global_step > checkpoint.step_of(found.newest_complete)


# ------------------------------------------------------------------------------------------------ 11: corrupt state
@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda data: b"", "is empty"),
        (lambda data: data[: len(data) // 2], "is truncated or corrupt"),
        (lambda data: b"no checkpoint here\n" * 50, "is not a torch checkpoint"),
    ],
    ids=["empty", "truncated", "garbage"],
)
def test_a_corrupt_state_file_names_the_file_the_problem_and_the_fix(damage, problem, run, tiny_model_path):
    out, _ = run
    state_file = out / "checkpoint-2" / "zrl_state_0.pt"
    state_file.write_bytes(damage(state_file.read_bytes()))
    resumed = _trainer(out.parent, tiny_model_path, max_steps=2)
    # the manifest's sizes and hashes catch the damage before anything is read
    with pytest.raises(CheckpointError, match=r"checkpoint-2 is incomplete: zrl_state_0.pt changed since it was"):
        resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    # a checkpoint written before manifests held digests: the safe load names the file, the problem and the fix
    manifest_path = out / "checkpoint-2" / checkpoint.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    del manifest["digests"]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError) as info:
        resumed.train(resume_from_checkpoint=True)
    message = str(info.value)
    assert message.startswith(f"zrl state file {state_file} {problem}")
    assert f"resume_from_checkpoint='{out / 'checkpoint-1'}'" in message and "resume_override" in message

    pm, probe = _probed()
    override = _trainer(out.parent, tiny_model_path, pm=pm, max_steps=2, resume_override=True)
    override.train(resume_from_checkpoint=True)  # weights and optimizer; components from their initial state
    assert probe.loaded == [("checkpoint-2", 0.05)]


def test_a_process_beyond_the_checkpoint_s_process_count_resumes_with_rank_0_state(tmp_path):
    for rank in (0, 1):
        (tmp_path / f"zrl_state_{rank}.pt").write_bytes(b"x")
    checkpoint.write_manifest(str(tmp_path), 5, 2, {})
    assert checkpoint.state_file(str(tmp_path), 1) == (str(tmp_path / "zrl_state_1.pt"), None)
    path, note = checkpoint.state_file(str(tmp_path), 3)
    assert path == str(tmp_path / "zrl_state_0.pt") and "written by 2 process(es)" in note
