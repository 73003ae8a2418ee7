"""End to end through the trainer: 1 process × 2 accumulation steps and 2 processes (gloo, DDP) × 1 step give the
same gradient for every normalizer, on the same 8 completions (docs/methods.md#aggregation: aggregation constants
do not change with the number of processes or accumulation steps)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import launch_two_cpu_processes

SCRIPT = Path(__file__).parent / "scripts" / "one_step_gradients.py"
NORMALIZERS = ["grpo", "dr_grpo", "lite_ppo", "batch", "rloo", "none"]


@pytest.mark.slow
def test_two_processes_give_the_gradient_of_two_accumulation_steps(tiny_model_path, tmp_path):
    accumulated, distributed = tmp_path / "accumulated", tmp_path / "distributed"
    accumulated.mkdir(), distributed.mkdir()
    one = subprocess.run(
        [sys.executable, str(SCRIPT), tiny_model_path, str(accumulated), "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-4000:]
    two = launch_two_cpu_processes(SCRIPT, tiny_model_path, str(distributed), "1")
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]

    for name in NORMALIZERS:
        a, d = torch.load(accumulated / f"{name}.pt"), torch.load(distributed / f"{name}.pt")
        assert a.norm() > 1e-2, name  # a real update, not an all-zero gradient
        torch.testing.assert_close(d, a, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")

    # The control aggregates over each micro-batch's own tokens; its gradient depends on the split, which shows the
    # two layouts really split the batch differently.
    a, d = torch.load(accumulated / "local_token_mean.pt"), torch.load(distributed / "local_token_mean.pt")
    assert (a - d).abs().max() > 1e-3
