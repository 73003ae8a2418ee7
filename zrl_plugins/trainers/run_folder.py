"""An output folder belongs to one run at a time.

* :class:`RunLock`: the main process holds an exclusive ``flock`` on ``<output_dir>/zrl_run.lock`` while it trains;
  a second run on the same folder is refused before it loads anything, naming the holder (the OS drops the lock of a
  process that dies, so a crash leaves no stale lock). Without it, two runs saving ``checkpoint-1`` at once mixed
  their files into one checkpoint that resumed without a word.
* A run id (:func:`new_run_id`) goes into every manifest; a resumed run carries its checkpoint's id on, so rotation
  (:func:`~zrl_plugins.trainers.checkpoint.rotate`) deletes only the older checkpoints of this run's lineage.
* A fresh run that finds checkpoints in its folder is refused (:func:`check_fresh_folder`): resuming, another
  folder, or ``overwrite_output_dir=True`` (which deletes them first) are the ways on. It used to rotate its own
  newest checkpoints away in favour of the older run's, which ``resume_from_checkpoint=True`` then continued.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from typing import Any

from .checkpoint import CheckpointError, read_manifest, scan

logger = logging.getLogger(__name__)

LOCK_FILE = "zrl_run.lock"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def run_id_of(checkpoint_dir: str) -> str | None:
    """The run id a checkpoint's manifest names (``None``: written before run ids, or not a zrl checkpoint)."""
    try:
        return read_manifest(checkpoint_dir).get("run_id")
    except (OSError, ValueError):
        return None


class RunLock:
    """An exclusive lock on ``output_dir`` for one run (``acquire`` / ``release``, or a ``with`` block)."""

    def __init__(self, output_dir: str, run_id: str):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self.run_id = run_id
        self.fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            raise CheckpointError(
                f"{os.path.dirname(self.path)} is in use by another run ({holder}): two runs writing one output_dir "
                "would mix their checkpoints. Use another output_dir, or wait for that run to end."
            ) from exc
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "run_id": self.run_id, "host": os.uname().nodename, "since": time.time()}
        os.write(fd, json.dumps(info).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']}, run {info['run_id']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that holds its lock"


def check_fresh_folder(output_dir: str, overwrite: bool, is_main: bool, saves: bool = True) -> None:
    """A run that does not resume must not share its folder with another run's checkpoints (``saves=False``: a run
    that writes no checkpoint only hears of them)."""
    found = scan(output_dir)
    folders = [*found.complete, *found.incomplete]
    if not folders:
        return
    names = ", ".join(sorted((os.path.basename(f) for f in folders), key=lambda n: int(n.split("-")[1])))
    if not saves and not overwrite:
        logger.warning("%s holds checkpoints of another run (%s); this run saves none", output_dir, names)
        return
    if not overwrite:
        raise CheckpointError(
            f"{output_dir} already holds checkpoints ({names}) of another run. Resume it with "
            "resume_from_checkpoint=True, choose another output_dir, or set overwrite_output_dir=True to delete them "
            "and start over."
        )
    if is_main:
        logger.warning("overwrite_output_dir: deleting the checkpoints of an earlier run in %s: %s", output_dir, names)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
