"""What a person watching a run sees: a progress bar (on a terminal) and one short line per optimizer step.

The Trainer's own console output is the raw metrics dict of every log call (~1,000 characters per step); every
metric still goes to ``trainer.state.log_history``, ``summary.json``, TensorBoard and W&B unchanged.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

MAX_LINE = 160


def _clock(seconds: float) -> str:
    seconds = max(round(seconds), 0)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


def step_line(step: int, total: int, logs: dict[str, Any], seconds_per_step: float | None, eta: float | None) -> str:
    """``step 3/14 | reward 0.42 | acc 0.38 | len 12.3 | 21.4 s/step | ETA 3:12`` (fields present in ``logs``)."""
    parts = [f"step {step}/{total}"]
    for key, label, fmt in (
        ("reward", "reward", ".3f"),
        ("accuracy", "acc", ".3f"),
        ("completions/mean_length", "len", ".1f"),
        ("kl", "kl", ".4f"),
    ):
        if isinstance(logs.get(key), int | float):
            parts.append(f"{label} {logs[key]:{fmt}}")
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.1f} s/step")
    if eta is not None:
        parts.append(f"ETA {_clock(eta)}")
    return " | ".join(parts)[:MAX_LINE]


class ConsoleProgress(TrainerCallback):
    """A progress bar on a terminal (stderr) and one line per logged step on stdout, main process only."""

    def __init__(self, label: str = "train", stream: Any = None):
        self.label = label
        self.stream = stream or sys.stdout
        self.bar = None
        self.started = 0.0
        self.first_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.started, self.first_step = time.time(), state.global_step
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.label, leave=False)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "train_runtime" in logs:
            done = state.global_step - self.first_step
            per_step = logs["train_runtime"] / max(done, 1)
            self._print(f"[{self.label}] done: {done} steps in {_clock(logs['train_runtime'])} ({per_step:.1f} s/step)")
            return
        if any(key.startswith("eval_") for key in logs):
            shown = {k.removeprefix("eval_"): v for k, v in logs.items()}
            self._print(f"[{self.label}] eval | " + step_line(state.global_step, state.max_steps, shown, None, None))
            return
        done = state.global_step - self.first_step
        per_step = (time.time() - self.started) / done if done > 0 else None
        eta = per_step * (state.max_steps - state.global_step) if per_step is not None else None
        self._print(f"[{self.label}] " + step_line(state.global_step, state.max_steps, logs, per_step, eta))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _print(self, line: str) -> None:
        line = line[:MAX_LINE]
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)


def quiet_startup() -> None:
    """Keep start-up noise off the console: TRL's experimental-feature notices, transformers' per-model "Loading
    weights" bars (in a log file each becomes one line of thousands of characters), and DeepSpeed's "unable to detect
    a GPU" warning on a machine that has none (where DeepSpeed is installed, accelerate imports it; naming its CPU
    accelerator is what the warning asks for). Call before the trainer is built."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if "DS_ACCELERATOR" not in os.environ:
        from .devices import cuda_available

        if not cuda_available():
            os.environ["DS_ACCELERATOR"] = "cpu"


def use_console(trainer: Any, label: str) -> Any:
    """Replace the Trainer's metrics-dict printing with :class:`ConsoleProgress`; returns ``trainer``."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ConsoleProgress(label))
    return trainer
