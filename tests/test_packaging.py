"""zrl from a wheel, outside the source tree: the recipe files are package data, `zrl recipes` lists them and
`zrl train` runs a preset from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_recipes_and_zrl_train_runs_from_it(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(wheels.glob("zrl_plugins-*.whl"))
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # a fresh directory, with the wheel's copy first on the path: nothing can come from the checkout
    env = {**os.environ, "PYTHONPATH": str(target), "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1"}
    work = tmp_path / "elsewhere"
    work.mkdir()

    def zrl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "zrl_plugins.apps.cli", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    listed = zrl("recipes", "--json")
    assert listed.returncode == 0, listed.stderr[-3000:]
    report = json.loads(listed.stdout)
    assert report["recipes_dir"].startswith(str(target))
    assert set(report["recipes"]) == {"simplerl_zoo", "dr_grpo", "lite_ppo", "ppo_max", "nested_reft"}
    assert Path(report["recipes"]["ppo_max"]["presets"]["cpu-demo"]).exists()
    assert (Path(report["recipes_dir"]) / "accelerate" / "deepspeed_zero3.yaml").exists()

    trained = zrl(
        "train",
        "simplerl_zoo",
        "--preset",
        "cpu-demo",
        "--model_name_or_path",
        "tiny",
        "--max_steps",
        "1",
        "--n_eval",
        "0",
        "--n_train",
        "16",
        "--per_device_train_batch_size",
        "8",
        "--num_generations",
        "4",
        "--max_completion_length",
        "8",
        "--output_dir",
        str(work / "out"),
    )
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-3000:]
    summary = json.loads((work / "out" / "summary.json").read_text())
    assert summary["method"] == "simplerl_zoo" and summary["max_steps"] == 1
    assert "[simplerl_zoo] step 1/1" in trained.stdout
