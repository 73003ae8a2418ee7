"""The trainer's side of checkpoints: the Trainer overrides a zrl trainer mixes in (:class:`CheckpointOverrides`)
and what they do — write every process's zrl state, then the completion marker, then rotate (:func:`save`); resume
only from a complete checkpoint of the same setup (:func:`prepare_resume`); restore every component's and plugin's
state (:func:`restore`). Files and folders — state files, manifest, scan, rotation — are :mod:`.checkpoint`'s.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .checkpoint import (
    STATE_FILE,
    CheckpointError,
    check_free_space,
    check_setup,
    describe_changes,
    estimate_bytes,
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
        with translated_write_errors(checkpoint_dir):
            write_manifest(checkpoint_dir, trainer.state.global_step, accelerator.num_processes, setup_of(args))
        rotate(run_dir, args.save_total_limit, trainer.state.best_model_checkpoint)
    accelerator.wait_for_everyone()


def _read_zrl_state(trainer: Any, checkpoint_dir: str) -> dict[str, Any]:
    path, _ = state_file(checkpoint_dir, trainer.accelerator.process_index)
    complete = scan(os.path.dirname(os.path.abspath(checkpoint_dir))).complete
    earlier = [c for c in complete if step_of(c) < step_of(checkpoint_dir)]
    return load_state(path, earlier[-1] if earlier else None)


def prepare_resume(trainer: Any, resume_from_checkpoint: str | bool) -> str:
    """The checkpoint to resume from: ``True`` takes the newest complete one (warning about newer incomplete ones);
    a changed setup is refused unless ``resume_override``; an unreadable zrl state stops the run before any step."""
    args = trainer.args
    target, notes = resolve_resume(args.output_dir, resume_from_checkpoint)
    for note in notes:
        warnings.warn(note, stacklevel=3)
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
        """Resume only from a complete checkpoint trained with this setup (or with ``resume_override``)."""
        if resume_from_checkpoint:
            resume_from_checkpoint = prepare_resume(self, resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_optimizer_and_scheduler(self, checkpoint_dir: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint_dir)
        if checkpoint_dir is not None:
            restore(self, checkpoint_dir)
