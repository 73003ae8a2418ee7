"""A run killed at each point of a save (before/after the model, optimizer, trainer state, zrl state, marker,
rotation) or whose save raises resumes, with ``resume_from_checkpoint=True``, from the newest complete checkpoint with
its component state (the adaptive KL coefficient) — on 1 process and on 2 (tests/scripts/checkpoint_kills.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import launch_two_cpu_processes
from tests.scripts.checkpoint_kills import KILLED, POINTS

SCRIPT = Path(__file__).parent / "scripts" / "checkpoint_kills.py"
ROOT = Path(__file__).resolve().parents[1]
COMPLETE_AT_STEP_2 = {"after marker", "after rotation"}  # killed once checkpoint-2 was marked complete
RAISED, STOPPED_BY_PEER = 1, -9


def _check(out: Path, specs: list[str], world: int) -> None:
    for rank in range(world):
        reference = json.loads((out / "reference" / f"reference_rank{rank}.json").read_text())
        assert reference["kl_coef"]["1"] != reference["kl_coef"]["2"]  # the controller moves: restoring it matters
        for spec in specs:
            point, _, dying = spec.partition(":")
            folder = out / point
            exit_code = int((folder / f"exit_rank{rank}").read_text())
            if rank == int(dying or 0):
                assert exit_code == (RAISED if point == "save raises" else KILLED), (point, rank)
            else:
                assert exit_code in (RAISED, STOPPED_BY_PEER), (point, rank)  # a raise reaches every process
            result = json.loads((folder / f"resumed_rank{rank}.json").read_text())
            assert "error" not in result, (point, rank, result.get("error"))
            step = 2 if point in COMPLETE_AT_STEP_2 else 1
            [(resumed_from, restored_beta)] = result["loaded"]
            assert resumed_from == f"checkpoint-{step}", (point, rank)
            assert restored_beta == reference["kl_coef"][str(step)], (point, rank)
            assert result["final_beta"] == pytest.approx(reference["final_beta"], rel=1e-6), (point, rank)
            skipped = [w for w in result["warnings"] if "skipping incomplete checkpoint" in w]
            if step == 1:  # checkpoint-2/ was there, unfinished (its save marker is the first thing written)
                assert len(skipped) == 1 and "checkpoint-2" in skipped[0], (point, rank, result["warnings"])
            else:
                assert not skipped, (point, rank)


@pytest.mark.slow
def test_killed_at_every_point_of_a_save_one_process(tiny_model_path, tmp_path):
    specs = list(POINTS)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, str(SCRIPT), tiny_model_path, str(tmp_path), *specs],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    _check(tmp_path, specs, world=1)


@pytest.mark.slow
def test_killed_at_points_of_a_save_two_processes(tiny_model_path, tmp_path):
    """Rank 1 dies before or after writing its own state (rank 0 wrote all of its files), rank 0 dies after the
    marker, and an observer raises on rank 1 only."""
    specs = ["before zrl state:1", "after zrl state:1", "after marker:0", "save raises:1"]
    result = launch_two_cpu_processes(SCRIPT, tiny_model_path, str(tmp_path), *specs)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    _check(tmp_path, specs, world=2)
