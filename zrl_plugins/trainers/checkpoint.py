"""zrl's part of a checkpoint: component and plugin state, the setup it was trained with, and the completion marker.

A ``checkpoint-<step>/`` folder counts as *complete* only when :data:`MANIFEST` is in it and every file the manifest
lists is there. The trainer writes, in this order: TRL's files (model, optimizer, scheduler, RNG, trainer state),
each process's :data:`STATE_FILE`, then — once every process has written its part — the manifest on the main process,
and only then rotates old checkpoints (:func:`rotate`). A process killed anywhere before the manifest leaves a folder
that resume skips (:func:`resolve_resume`); rotation only ever deletes checkpoints older than the newest complete one.

State files are read with ``torch.load(weights_only=True)``: tensors, numbers, strings and containers, never code.
State that could not be read back that way is refused when it is saved (:func:`validate_state`), naming its owner.
The trainer's side (its overrides, saving, resuming, restoring) is :mod:`.checkpointing`. See ``docs/checkpoints.md``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..framework.errors import PluginError, ZRLError

logger = logging.getLogger(__name__)

STATE_FILE = "zrl_state_{rank}.pt"
MANIFEST = "zrl_checkpoint.json"
SAVE_MARKER = "zrl_save_started"  # written first: a folder without a manifest but with it is an unfinished zrl save
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
_FORMAT = 2  # 2: file digests, run id, data fingerprint


class CheckpointError(ZRLError):
    """A checkpoint that cannot be written, chosen or read as asked; the message says which file and what to do."""


class ResumeMismatchError(CheckpointError, ValueError):
    """The checkpoint was trained with other components (or β) than the configuration resuming it."""


# ------------------------------------------------------------------------------------------------------- state
def validate_state(owner: str, state: Any) -> None:
    """Raise :class:`CheckpointError` naming ``owner`` and the first value of ``state`` that a safe load
    (``torch.load(weights_only=True)``) would refuse. Called before anything is written."""
    if _round_trips(state):
        return
    path, value = _first_unsafe(state, "")
    raise CheckpointError(
        f"{owner} put a value of type {_type_name(value)} at state{path}, which a checkpoint cannot hold: zrl reads "
        "checkpoints with torch.load(weights_only=True) so that a checkpoint cannot run code. Store tensors, numbers, "
        "strings, bytes and lists/tuples/dicts/sets of them (e.g. a generator's get_state() tensor, not the "
        "generator)."
    )


def _round_trips(value: Any) -> bool:
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except Exception:
        return False
    return True


def _first_unsafe(value: Any, path: str) -> tuple[str, Any]:
    if type(value) in (dict, OrderedDict):
        items: Iterator[tuple[str, Any]] = ((f"[{k!r}]", v) for k, v in value.items())
    elif type(value) in (list, tuple):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    elif type(value) is set:
        items = ((f"{{{v!r}}}", v) for v in value)
    else:
        return path, value
    for key, child in items:
        if not _round_trips(child):
            return _first_unsafe(child, path + key)
    return path, value  # every child alone is fine: the container itself is not (e.g. a dict with object keys)


def _type_name(value: Any) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def write_state(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write one process's state; the final name appears only once the file is whole (write, then rename)."""
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: str | os.PathLike[str], fallback: str | None = None) -> dict[str, Any]:
    """Read a state file safely; a missing, empty, truncated, foreign or code-carrying file is a
    :class:`CheckpointError` naming the file, what is wrong with it and what to do (``fallback``: the checkpoint to
    suggest instead)."""
    path = Path(path)
    problem = None
    try:
        if path.stat().st_size == 0:
            problem = "is empty"
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("components"), dict):
                return state
            problem = f"does not hold zrl state (a {_type_name(state)} without 'components')"
    except FileNotFoundError:
        problem = "is missing"
    except pickle.UnpicklingError as exc:
        unsupported = re.search(r"GLOBAL\s+([\w.]+)|[Uu]nsupported class\s+([\w.]+)", str(exc))
        if unsupported:
            problem = (
                f"holds {unsupported.group(1) or unsupported.group(2)}, which a safe load (weights_only=True) refuses: "
                "the file could run code when loaded. Nothing from it was executed"
            )
        else:
            detail = re.search(r"Unsupported operand[^\n]*|invalid load key[^\n]*", str(exc))
            problem = f"is not a torch checkpoint ({detail.group(0) if detail else str(exc).splitlines()[0]})"
    except (EOFError, RuntimeError, ValueError, OSError) as exc:
        problem = f"is truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    checkpoint = path.parent
    if fallback is not None:
        fix = f"resume from the newest complete checkpoint before it (resume_from_checkpoint={str(fallback)!r})"
    else:
        fix = "resume from another checkpoint"
    raise CheckpointError(
        f"zrl state file {path} {problem}. To go on: {fix}, delete {checkpoint}, or set resume_override=True to load "
        "its weights and optimizer and start zrl's components from their initial state."
    )


# ------------------------------------------------------------------------------------------------------- setup
def setup_of(args: Any) -> dict[str, Any]:
    """The components (names and keyword arguments) and initial β a run trains with, as JSON values (what a checkpoint
    records and a resume compares)."""
    setup = {
        "normalizer": args.normalizer,
        "normalizer_kwargs": args.normalizer_kwargs,
        "policy_loss": args.policy_loss,
        "policy_loss_kwargs": args.policy_loss_kwargs,
        "kl_penalty": args.kl_penalty,
        "kl_penalty_kwargs": args.kl_penalty_kwargs,
        "beta": float(args.beta),
        "rollout": args.rollout,
        "rollout_kwargs": args.rollout_kwargs,
        "verifiers": list(args.verifiers),
        "verifier_kwargs": args.verifier_kwargs,
    }
    return json.loads(json.dumps(setup, sort_keys=True, default=repr))


def setup_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (checkpoint's value, this run's value)}`` for every setup entry that differs."""
    return {
        key: (saved.get(key), current.get(key))
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    }


def describe_changes(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{key}: checkpoint {old!r} -> this run {new!r}" for key, (old, new) in changes.items())


def replaced_state_keys(changes: Mapping[str, tuple[Any, Any]]) -> set[str]:
    """The component-state entries that a resume with ``changes`` must not restore (their component was replaced)."""
    keys = {kind for kind in ("normalizer", "kl_penalty", "rollout") if kind in changes or f"{kind}_kwargs" in changes}
    if "verifier_kwargs" in changes:
        old, new = (value or {} for value in changes["verifier_kwargs"])
        keys |= {f"verifier:{name}" for name in set(old) | set(new) if old.get(name) != new.get(name)}
    return keys


def check_setup(checkpoint_dir: str, current: Mapping[str, Any], override: bool) -> dict[str, tuple[Any, Any]]:
    """The setup changes since ``checkpoint_dir`` was written; an error when there are any and ``override`` is off."""
    changes = setup_changes(read_manifest(checkpoint_dir)["setup"], current)
    if changes and not override:
        raise ResumeMismatchError(
            f"{checkpoint_dir} was trained with another setup than this run: {describe_changes(changes)}. Resume with "
            "the checkpoint's setup, or set resume_override=True (--resume_override) to train on with this run's "
            "(changed components then start from their initial state, a changed beta replaces the checkpoint's)."
        )
    return changes


# ------------------------------------------------------------------------------------------------------- manifest
def state_file(checkpoint_dir: str, rank: int) -> tuple[str, str | None]:
    """The state file process ``rank`` resumes from, and a note when it is another process's: a checkpoint written
    by fewer processes gives the extra ones rank 0's state (components hold the same state on every process)."""
    own = os.path.join(checkpoint_dir, STATE_FILE.format(rank=rank))
    written_by = read_manifest(checkpoint_dir).get("num_processes", 1)
    if rank < written_by:
        return own, None
    note = f"{checkpoint_dir} was written by {written_by} process(es); process {rank} resumes with rank 0's zrl state"
    return os.path.join(checkpoint_dir, STATE_FILE.format(rank=0)), note


def file_digest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Size and SHA-256 of one file (read once, in 1 MiB blocks)."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": os.path.getsize(path), "sha256": digest}


def write_manifest(
    checkpoint_dir: str,
    step: int,
    world_size: int,
    setup: Mapping[str, Any],
    run_id: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> None:
    """Mark ``checkpoint_dir`` complete: every file now in it (all processes have written theirs) with its size and
    SHA-256, the setup, the run that wrote it and the data it trained on."""
    paths = [p for p in Path(checkpoint_dir).rglob("*") if p.is_file() and not p.name.endswith(".tmp")]
    files = sorted(str(p.relative_to(checkpoint_dir)) for p in paths if p.name != MANIFEST)
    missing = [STATE_FILE.format(rank=r) for r in range(world_size) if STATE_FILE.format(rank=r) not in files]
    if missing:
        raise CheckpointError(f"{checkpoint_dir} lacks {missing} after every process wrote its state")
    manifest = {
        "format": _FORMAT,
        "step": step,
        "num_processes": world_size,
        "files": files,
        "digests": {name: file_digest(os.path.join(checkpoint_dir, name)) for name in files},
        "setup": dict(setup),
        "run_id": run_id,
        "data": dict(data or {}),
    }
    tmp = os.path.join(checkpoint_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(checkpoint_dir, MANIFEST))


def read_manifest(checkpoint_dir: str) -> dict[str, Any]:
    with open(os.path.join(checkpoint_dir, MANIFEST)) as f:
        return json.load(f)


def is_foreign_checkpoint(checkpoint_dir: str) -> bool:
    """A checkpoint written by TRL's or transformers' own Trainer: their files, and no trace of zrl's."""
    names = set(os.listdir(checkpoint_dir)) if os.path.isdir(checkpoint_dir) else set()
    zrl_files = bool({MANIFEST, SAVE_MARKER} & names) or any(n.startswith("zrl_state_") for n in names)
    return "trainer_state.json" in names and not zrl_files


def incomplete_reason(checkpoint_dir: str) -> str | None:
    """Why ``checkpoint_dir`` cannot be resumed from (the missing, unreadable or changed file), or ``None`` if it is
    complete. Sizes are compared here (cheap: every save scans); :func:`changed_files` compares the hashes."""
    path = os.path.join(checkpoint_dir, MANIFEST)
    if not os.path.isfile(path):
        if is_foreign_checkpoint(checkpoint_dir):
            return (
                f"it is not a zrl checkpoint (no {MANIFEST}, no zrl state: written by TRL's or transformers' "
                "Trainer). resume_override=True loads its model, optimizer and scheduler and starts zrl's components "
                "from their initial state"
            )
        return f"{MANIFEST} is missing: the save did not finish"
    try:
        manifest = read_manifest(checkpoint_dir)
        files = list(manifest["files"])
        digests = dict(manifest.get("digests") or {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is unreadable ({type(exc).__name__}: {exc})"
    for name in files:
        file_path = os.path.join(checkpoint_dir, name)
        if not os.path.isfile(file_path):
            return f"{name} is missing"
        expected = digests.get(name, {}).get("size")
        if expected is not None and os.path.getsize(file_path) != expected:
            return f"{name} changed since it was written ({expected} bytes then, {os.path.getsize(file_path)} now)"
    try:  # the first file a resume reads
        with open(os.path.join(checkpoint_dir, "trainer_state.json")) as f:
            json.load(f)
    except FileNotFoundError:
        pass  # not every checkpoint has one (a save_only_model-free custom trainer); the manifest decides
    except (OSError, ValueError) as exc:
        return f"trainer_state.json is unreadable ({type(exc).__name__}: {exc})"
    return None


def changed_files(checkpoint_dir: str) -> list[str]:
    """The files of a complete checkpoint whose SHA-256 is no longer the one its manifest recorded (read in full:
    only for the checkpoint a run resumes from)."""
    digests = read_manifest(checkpoint_dir).get("digests") or {}
    return [
        name
        for name, recorded in digests.items()
        if file_digest(os.path.join(checkpoint_dir, name))["sha256"] != recorded["sha256"]
    ]


@dataclass(frozen=True)
class Scan:
    """The ``checkpoint-<step>`` folders of a run directory, oldest first."""

    complete: list[str]
    incomplete: dict[str, str]  # folder -> why

    @property
    def newest_complete(self) -> str | None:
        return self.complete[-1] if self.complete else None


def scan(run_dir: str) -> Scan:
    folders = []
    if os.path.isdir(run_dir):
        for name in os.listdir(run_dir):
            match = _CHECKPOINT_DIR.match(name)
            if match and os.path.isdir(os.path.join(run_dir, name)):
                folders.append((int(match.group(1)), os.path.join(run_dir, name)))
    complete, incomplete = [], {}
    for _, folder in sorted(folders):
        reason = incomplete_reason(folder)
        if reason is None:
            complete.append(folder)
        else:
            incomplete[folder] = reason
    return Scan(complete, incomplete)


def check_unchanged(checkpoint_dir: str, changed: list[str]) -> None:
    """Refuse a checkpoint whose files ``changed`` (:func:`changed_files`) since its manifest hashed them."""
    if changed:
        raise CheckpointError(
            f"checkpoint {checkpoint_dir} changed after it was written: {', '.join(changed)} no longer match the "
            f"SHA-256 in its {MANIFEST} (overwritten by another run, or corrupted). Resume from another checkpoint."
        )


def resolve_resume(
    output_dir: str, resume_from_checkpoint: str | bool, override: bool = False
) -> tuple[str, list[str]]:
    """The checkpoint to resume from and the warnings to give: ``True`` → the newest complete one in ``output_dir``
    (naming the incomplete ones skipped); a path → that one, if complete (or, with ``override``, a TRL checkpoint).
    The trainer then checks its files' hashes (:func:`changed_files`, :func:`check_unchanged`)."""
    if resume_from_checkpoint is True:
        found = scan(output_dir)
        if found.newest_complete is None:
            skipped = "; ".join(f"{f}: {why}" for f, why in found.incomplete.items())
            detail = f" (incomplete: {skipped})" if skipped else ""
            raise CheckpointError(
                f"no complete checkpoint in {output_dir}{detail}. Start without resume_from_checkpoint, or pass the "
                "path of a checkpoint."
            )
        newest_step = step_of(found.newest_complete)
        warnings = [
            f"skipping incomplete checkpoint {folder} ({why}); resuming from {found.newest_complete}"
            for folder, why in found.incomplete.items()
            if step_of(folder) > newest_step
        ]
        return found.newest_complete, warnings
    path = str(resume_from_checkpoint)
    if not os.path.isdir(path):
        raise CheckpointError(f"resume_from_checkpoint={path!r} is not a directory")
    reason = incomplete_reason(path)
    if reason is not None and override and is_foreign_checkpoint(path):
        return path, [f"{path} is not a zrl checkpoint: resume_override loads its model and optimizer only"]
    if reason is not None:
        newest = scan(os.path.dirname(os.path.abspath(path))).newest_complete
        advice = f"The newest complete checkpoint is {newest}." if newest else "No checkpoint next to it is complete."
        raise CheckpointError(f"checkpoint {path} is incomplete: {reason}. {advice}")
    return path, []


def step_of(folder: str) -> int:
    match = _CHECKPOINT_DIR.match(os.path.basename(folder))
    return int(match.group(1)) if match else -1


def rotate(
    run_dir: str, save_total_limit: int | None, best_model_checkpoint: str | None = None, run_id: str | None = None
) -> list[str]:
    """Delete old checkpoints, keeping the newest ``save_total_limit`` complete ones (and the best one); incomplete
    folders older than the newest complete one can never be resumed and go too. With ``run_id``, only that run's
    checkpoints count and go: another run's are never deleted. Returns the deleted folders."""
    if not save_total_limit or save_total_limit <= 0:
        return []
    found = scan(run_dir)
    if run_id is not None:
        found = Scan([f for f in found.complete if read_manifest(f).get("run_id") == run_id], found.incomplete)
    if found.newest_complete is None:
        return []
    keep = set(found.complete[-save_total_limit:])
    if best_model_checkpoint is not None:
        keep.add(os.path.abspath(best_model_checkpoint))
    newest_step = step_of(found.newest_complete)
    doomed = [f for f in found.complete if f not in keep and os.path.abspath(f) not in keep]
    doomed += [f for f in found.incomplete if step_of(f) < newest_step]
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


# ------------------------------------------------------------------------------------------------------- disk
def estimate_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, save_only_model: bool) -> int:
    """A lower bound of what one checkpoint writes: the parameters, and the optimizer's tensors unless
    ``save_only_model`` (parameters sharded away from this process count 0, so the bound stays a bound)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if optimizer is not None and not save_only_model:
        for state in getattr(optimizer, "state", {}).values():
            total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


def check_free_space(directory: str, needed: int) -> None:
    os.makedirs(directory, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise CheckpointError(
            f"not enough disk space for a checkpoint in {directory}: it needs at least {_mb(needed)}, {_mb(free)} "
            "are free. Free space, lower save_total_limit, or point output_dir at a larger disk."
        )


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


_DISK_FULL_TEXT = ("unexpected pos", "file write failed", "no space left", "storagefull", "code: 28")


@contextmanager
def translated_write_errors(checkpoint_dir: str) -> Iterator[None]:
    """Turn a full disk or an unwritable directory met while writing ``checkpoint_dir`` into a
    :class:`CheckpointError` that says so (torch's zip writer reports a full disk as ``unexpected pos``)."""
    try:
        yield
    except (CheckpointError, PluginError):
        raise  # a plugin's failure is named as the plugin's, whatever it was
    except Exception as exc:
        code = getattr(exc, "errno", None)
        text = str(exc).lower()
        parent = os.path.dirname(os.path.abspath(checkpoint_dir))
        if code in (errno.ENOSPC, errno.EDQUOT) or any(t in text for t in _DISK_FULL_TEXT):
            free = shutil.disk_usage(parent).free if os.path.isdir(parent) else 0
            raise CheckpointError(
                f"the disk is full: could not write checkpoint {checkpoint_dir} ({_mb(free)} free on its file "
                f"system; {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). The checkpoint is "
                "left incomplete and resume will skip it. Free space, lower save_total_limit, or point output_dir at "
                "a larger disk."
            ) from exc
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise CheckpointError(
                f"cannot write checkpoint {checkpoint_dir}: {parent} is not writable ({exc.strerror}). Point "
                "output_dir at a writable directory."
            ) from exc
        raise
