"""Shared benchmark plumbing: step timing, result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

RESULTS = Path(__file__).parent / "results"


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (generation + loss + backward + optimizer), from the Trainer's callbacks."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def machine() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_results(name: str, payload: dict[str, Any], table: str) -> Path:
    """Write ``bench/results/<name>.json`` (payload + machine) and ``<name>.md`` (the table), and print both."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**payload, "machine": machine()}, indent=2))
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table)
    print(f"wrote {path}")
    return path


def median(values: list[float]) -> float:
    return statistics.median(values)
