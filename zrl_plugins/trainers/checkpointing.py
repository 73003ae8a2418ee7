"""The trainer's side of checkpoints: the Trainer overrides a zrl trainer mixes in (:class:`CheckpointOverrides`)
and what they do — write every process's zrl state, then the completion marker, then rotate (:func:`save`); resume
only from a complete checkpoint of the same setup (:func:`prepare_resume`); restore every component's and plugin's
state (:func:`restore`). Files and folders — state files, manifest, scan, rotation — are :mod:`.checkpoint`'s.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import broadcast_object_list

from .checkpoint import (
    SAVE_MARKER,
    STATE_FILE,
    CheckpointError,
    changed_files,
    check_free_space,
    check_setup,
    check_unchanged,
    describe_changes,
    estimate_bytes,
    is_foreign_checkpoint,
    load_state,
    read_manifest,
    replaced_state_keys,
    resolve_resume,
    rotate,
    scan,
    setup_changes,
    setup_of,
    state_file,
    step_of,
    translated_write_errors,
    validate_state,
    write_manifest,
    write_state,
)
from .run_folder import RunLock, check_fresh_folder, new_run_id, run_id_of

logger = logging.getLogger(__name__)


def _state_owner(trainer: Any, key: str) -> str:
    """Who a component-state entry belongs to, for error messages: the plugin and the component."""
    kind, _, name = key.partition(":")
    name = name or getattr(trainer.args, kind, None)
    try:
        return f"plugin {trainer.zrl_pm.entry(kind, name).plugin!r} ({kind} {name!r}.state_dict())"
    except (KeyError, ValueError):  # a reward function passed to the trainer directly, or zrl's own guard
        return f"{key}.state_dict()"


def zrl_state(trainer: Any, checkpoint_dir: str) -> dict[str, Any]:
    """This process's zrl state, checked to be loadable with ``weights_only=True`` before anything is written."""
    components = {}
    for key, component in trainer._stateful_components().items():
        components[key] = component.state_dict()
        validate_state(_state_owner(trainer, key), components[key])
    plugins: dict[str, Any] = {}
    pm = trainer.zrl_pm
    pm.call_observer("zrl_on_save_checkpoint", trainer=trainer, checkpoint_dir=checkpoint_dir, state=plugins)
    implementers = [impl.plugin_name for impl in pm.pm.hook.zrl_on_save_checkpoint.get_hookimpls()]
    for key, value in plugins.items():
        owner = f"plugin {key!r}" if key in implementers else f"one of the plugins {implementers}"
        validate_state(f"{owner} (zrl_on_save_checkpoint, key {key!r})", value)
    state = {"components": components, "plugins": plugins, "kl_window": trainer.kl_control.window.clone()}
    buffer = generation_buffer(trainer)
    if buffer is not None:
        state["generation_buffer"] = buffer
    return state


def generation_buffer(trainer: Any) -> dict[str, Any] | None:
    """TRL's generation buffer and the position in it, when the checkpoint falls inside one: with
    ``steps_per_generation`` or ``num_iterations`` (PPO's epochs and mini-batches) > 1 the next steps reuse buffered
    batches, which TRL's own checkpoint does not hold — without them a resumed run would generate a new batch where
    the uninterrupted one reused its buffered one."""
    buffered = getattr(trainer, "_buffered_inputs", None)
    generate_every = trainer.args.steps_per_generation * trainer.num_iterations
    if buffered is None or trainer._step % generate_every == 0:
        return None  # the next step generates anyway
    buffer = {"step": int(trainer._step), "batches": [dict(batch) for batch in buffered]}
    try:
        validate_state("TRL's generation buffer", buffer)
    except CheckpointError as exc:
        logger.warning("%s The checkpoint holds no generation buffer: a resume from it regenerates.", exc)
        return None
    return buffer


def restore_generation_buffer(trainer: Any, buffer: dict[str, Any]) -> None:
    """Put TRL's generation buffer back where the checkpoint left it (tensors onto this process's device)."""
    device = trainer.accelerator.device

    def placed(value: Any) -> Any:
        return value.to(device) if isinstance(value, torch.Tensor) else value

    trainer._buffered_inputs = [{k: placed(v) for k, v in batch.items()} for batch in buffer["batches"]]
    trainer._step = int(buffer["step"])


def save(trainer: Any, trial: Any, trl_save: Callable[[], None]) -> None:
    """TRL's save (``trl_save``) without its rotation, then every process's zrl state, then — once all processes
    wrote theirs — the completion marker, then rotation."""
    args, accelerator = trainer.args, trainer.accelerator
    run_dir = trainer._get_output_dir(trial=trial)
    checkpoint_dir = os.path.join(run_dir, f"checkpoint-{trainer.state.global_step}")
    check_free_space(run_dir, estimate_bytes(trainer.model, trainer.optimizer, args.save_only_model))
    failure: BaseException | None = None
    try:
        with translated_write_errors(checkpoint_dir):
            if args.should_save:  # first of all: marks the folder as a zrl save, finished or not
                os.makedirs(checkpoint_dir, exist_ok=True)
                open(os.path.join(checkpoint_dir, SAVE_MARKER), "w").close()
            limit, args.save_total_limit = args.save_total_limit, None
            try:
                trl_save()
            finally:
                args.save_total_limit = limit
            state = zrl_state(trainer, checkpoint_dir)
            write_state(os.path.join(checkpoint_dir, STATE_FILE.format(rank=accelerator.process_index)), state)
    except Exception as exc:
        failure = exc
    failed = torch.tensor(float(failure is not None), device=accelerator.device)
    if accelerator.reduce(failed, reduction="sum").item() > 0:
        if failure is not None:
            raise failure
        raise CheckpointError(
            f"another process failed to write its part of {checkpoint_dir}; the checkpoint is left incomplete"
        )
    if args.should_save:
        run_id = getattr(trainer, "_zrl_run_id", None)
        with translated_write_errors(checkpoint_dir):
            step, processes = trainer.state.global_step, accelerator.num_processes
            data = data_fingerprint(trainer)
            write_manifest(checkpoint_dir, step, processes, setup_of(args), run_id, data)
        rotate(run_dir, args.save_total_limit, trainer.state.best_model_checkpoint, run_id)
    accelerator.wait_for_everyone()


def _read_zrl_state(trainer: Any, checkpoint_dir: str) -> dict[str, Any]:
    path, _ = state_file(checkpoint_dir, trainer.accelerator.process_index)
    complete = scan(os.path.dirname(os.path.abspath(checkpoint_dir))).complete
    earlier = [c for c in complete if step_of(c) < step_of(checkpoint_dir)]
    return load_state(path, earlier[-1] if earlier else None)


def data_fingerprint(trainer: Any) -> dict[str, Any]:
    """What the run trains on, to tell a resume with other data: the rows (count and content hash, the data set's
    own fingerprint where it has one) and ``num_generations``."""
    dataset = trainer.train_dataset
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is None and dataset is not None and hasattr(dataset, "__len__"):
        fingerprint = hashlib.sha256(repr([dataset[i] for i in range(min(len(dataset), 1000))]).encode()).hexdigest()
    rows = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    return {"rows": rows, "fingerprint": fingerprint, "num_generations": trainer.args.num_generations}


def warn_data_changes(saved: dict[str, Any], current: dict[str, Any], checkpoint_dir: str) -> None:
    """A resume on other data, or with another ``num_generations``, continues — but says so (the data loader's
    position then points into other rows)."""
    changes = [
        f"{key} {saved[key]!r} -> {current.get(key)!r}"
        for key in ("rows", "num_generations", "fingerprint")
        if key in saved and saved[key] != current.get(key)
    ]
    if changes:
        logger.warning(
            "resuming %s with other data than it trained on (%s): the run goes on, but the rows it sees next are not "
            "the ones the interrupted run would have seen.",
            checkpoint_dir,
            "; ".join(changes),
        )


def prepare_resume(trainer: Any, resume_from_checkpoint: str | bool) -> str:
    """The checkpoint to resume from: ``True`` takes the newest complete one (warning about newer incomplete ones);
    a changed setup is refused unless ``resume_override``; an unreadable zrl state stops the run before any step; a
    checkpoint of TRL's own Trainer resumes only with ``resume_override``; other data is warned about."""
    args = trainer.args
    target, notes = resolve_resume(args.output_dir, resume_from_checkpoint, args.resume_override)
    for note in notes:
        warnings.warn(note, stacklevel=3)
    if is_foreign_checkpoint(target):
        return target  # resume_override (resolve_resume refused it otherwise): TRL's files, zrl's initial state
    # the main process reads every file once to hash it; the others take its answer (a shared file system)
    accelerator = trainer.accelerator
    changed = changed_files(target) if accelerator.is_main_process else []
    if accelerator.num_processes > 1:
        changed = broadcast_object_list([changed])[0]
    check_unchanged(target, changed)
    warn_data_changes(read_manifest(target).get("data") or {}, data_fingerprint(trainer), target)
    changes = check_setup(target, setup_of(args), args.resume_override)
    if changes:
        logger.warning(
            "resume_override: this run's setup replaces the checkpoint's where they differ: %s",
            describe_changes(changes),
        )
    if not args.resume_override:
        _read_zrl_state(trainer, target)
    return target


def restore(trainer: Any, checkpoint_dir: str) -> None:
    """Load the components' and plugins' state of ``checkpoint_dir`` into ``trainer`` (after TRL restored its own);
    components a ``resume_override`` replaced start from their initial state."""
    args = trainer.args
    if is_foreign_checkpoint(checkpoint_dir):
        logger.warning("%s is not a zrl checkpoint: zrl's components start from their initial state.", checkpoint_dir)
        return
    changes = setup_changes(read_manifest(checkpoint_dir)["setup"], setup_of(args))
    replaced = replaced_state_keys(changes)
    _, note = state_file(checkpoint_dir, trainer.accelerator.process_index)
    if note:
        logger.warning(note)
    stateful = trainer._stateful_components()
    try:
        state = _read_zrl_state(trainer, checkpoint_dir)
    except CheckpointError as exc:
        if not args.resume_override:
            raise
        logger.warning("%s resume_override: zrl's components start from their initial state.", exc)
        state, replaced = {"components": {}, "plugins": {}}, set(stateful)
    saved = dict(state["components"])
    if "beta" in changes and "kl_penalty" in saved and "kl_penalty" not in replaced:
        saved["kl_penalty"] = {**saved["kl_penalty"], "beta": trainer.kl_penalty.controller.beta}
    for key, component in stateful.items():
        if key in replaced:
            continue  # a component the override replaced starts from its initial state
        if key in saved:
            component.load_state_dict(saved[key])
        else:
            warnings.warn(
                f"checkpoint {checkpoint_dir} has no state for {key}; keeping its initial state.", stacklevel=3
            )
    if "kl_window" in state:
        trainer.kl_control.window = state["kl_window"].clone()
    if state.get("generation_buffer") is not None:
        if changes:  # batches scored and normalized under the checkpoint's setup: this run's setup regenerates them
            logger.warning("resume_override: the checkpoint's buffered batches are dropped; the next step generates.")
        else:
            restore_generation_buffer(trainer, state["generation_buffer"])
    trainer.zrl_pm.call_observer(
        "zrl_on_load_checkpoint", trainer=trainer, checkpoint_dir=checkpoint_dir, state=state.get("plugins", {})
    )


class CheckpointOverrides:
    """The Trainer methods a zrl trainer overrides for checkpoints (mixed in before TRL's trainer): saves are
    complete or ignored, resume takes only a complete checkpoint of the same setup, and restores every component's
    state. The trainer names its stateful components in ``_stateful_components``."""

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """TRL's save without its rotation, every process's zrl state, the completion marker, then rotation."""
        save(self, trial, lambda: super(CheckpointOverrides, self)._save_checkpoint(model, trial))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """Resume only from a complete checkpoint trained with this setup (or with ``resume_override``); a fresh
        run only into a folder without another run's checkpoints; the folder locked while this run writes it."""
        output_dir, is_main = self.args.output_dir, self.accelerator.is_main_process
        lock = RunLock(output_dir, new_run_id()) if is_main else None
        if lock is not None:
            lock.acquire()  # before anything is read: another run may be writing these checkpoints
        try:
            if resume_from_checkpoint:
                resume_from_checkpoint = prepare_resume(self, resume_from_checkpoint)
                self._zrl_run_id = run_id_of(resume_from_checkpoint) or new_run_id()  # the checkpoint's lineage
            else:
                saves = self.args.save_strategy != "no"
                check_fresh_folder(output_dir, self.args.overwrite_output_dir, is_main, saves)
                self._zrl_run_id = lock.run_id if lock is not None else new_run_id()
            self.accelerator.wait_for_everyone()
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            if lock is not None:
                lock.release()

    def _load_optimizer_and_scheduler(self, checkpoint_dir: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint_dir)
        if checkpoint_dir is not None:
            restore(self, checkpoint_dir)
