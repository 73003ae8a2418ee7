"""The main job as a new user runs it: clone this repository's HEAD into a fresh directory and run
``bash scripts/demo.sh`` there (its own ``.venv``, set up from the package registries), timing setup and job apart.

    python -m bench.demo_clean_clone                   # ~10 min of setup + the job

Writes ``bench/results/demo_cpu.{json,md}`` (the demo's ``summary.json`` plus ``setup_minutes`` and
``job_wall_minutes``, measured outside the process) and ``bench/results/demo_cpu.png`` (its reward curve).
``wall_minutes`` is the job itself: from the demo's start to its summary, both evaluations included; setup (the
virtual environment, packages, converting SmolLM2's GGUF once) is not part of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def table(summary: dict) -> str:
    """The markdown table of a clean-clone result."""
    before, after = summary["accuracy_before"], summary["accuracy_after"]
    (lb, hb), (la, ha) = summary["accuracy_before_interval"], summary["accuracy_after_interval"]
    return "\n".join(
        [
            "| held-out problems | greedy accuracy before (95 % CI) | after (95 % CI) | gain | job wall minutes "
            "| device |",
            "|---|---|---|---|---|---|",
            f"| {summary['held_out_problems']} | {before:.3f} ({lb:.3f}–{hb:.3f}) | {after:.3f} ({la:.3f}–{ha:.3f}) | "
            f"{after - before:+.3f} | {summary['wall_minutes']} | {summary['device']} |",
            "",
            f"`bash scripts/demo.sh` on a fresh clone of {summary['commit'][:10]}: {summary['steps']} GRPO steps, "
            f"{summary['seconds_per_step']} s/step. Job wall minutes: the demo's own clock, both evaluations included; "
            f"`demo.sh` as a whole after setup took {summary['job_wall_minutes']} min (it also converts SmolLM2's GGUF "
            f"once and starts Python); setup (venv, packages) took {summary['setup_minutes']} min before it.",
        ]
    )


def main() -> dict:
    from bench.common import RESULTS, write_results

    with tempfile.TemporaryDirectory(prefix="zrl-clean-clone-") as tmp:
        clone = Path(tmp) / "zrl"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
        started = time.time()
        subprocess.run(["bash", "scripts/setup.sh"], cwd=clone, check=True)
        setup_done = time.time()
        out = clone / "outputs" / "demo"
        # demo.sh runs setup.sh again (idempotent, seconds) and converts the GGUF (setup), then the job
        env = {**os.environ, "ZRL_CACHE": str(Path(tmp) / "cache")}  # converts SmolLM2 afresh, as a new user does
        subprocess.run(["bash", "scripts/demo.sh", "--output_dir", str(out)], cwd=clone, check=True, env=env)
        finished = time.time()
        summary = json.loads((out / "summary.json").read_text())
        shutil.copy(out / "reward_curve.png", RESULTS / "demo_cpu.png")
    summary.update(
        commit=commit,
        setup_minutes=round((setup_done - started) / 60, 2),
        job_wall_minutes=round((finished - setup_done) / 60, 2),
        how="bash scripts/demo.sh on a fresh clone",
    )
    write_results("demo_cpu", summary, table(summary))
    return summary


if __name__ == "__main__":
    main()
