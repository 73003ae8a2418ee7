"""recipes/ablate.py on the tiny model: 2 values x 2 steps, JSON and PNG written; recipe fields and PPO recipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--model_name_or_path",
    "tiny",
    "--use_cpu",
    "--bf16",
    "false",
    "--report_to",
    "none",
    "--per_device_train_batch_size",
    "8",
    "--num_generations",
    "4",
    "--max_completion_length",
    "8",
    "--save_strategy",
    "no",
    "--gradient_checkpointing",
    "false",
    "--logging_steps",
    "1",
]


def _ablate(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "recipes" / "ablate.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ})


def test_ablation_smoke(tmp_path):
    result = _ablate(
        "--sweep", "normalizer=grpo,dr_grpo", *TINY, "--max_steps", "2", "--n_eval", "6", "--output_dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert report["field"] == "normalizer" and report["values"] == ["grpo", "dr_grpo"]
    assert report["recipe"] == "dr_grpo" and report["held_out_problems"] == 6
    for value in ("grpo", "dr_grpo"):
        rows = report["per_step"][value]
        assert [r["step"] for r in rows] == [1, 2]
        for row in rows:
            assert 0.0 <= row["accuracy"] <= 1.0
            assert row["length_correct"] is not None or row["length_incorrect"] is not None
        assert 0.0 <= report["summary"][value]["held_out_after"] <= 1.0
        assert (tmp_path / f"normalizer={value}" / f"seed={report['seeds'][0]}").is_dir()
    # the same held-out rows, model and verifier for both values: one "before" serves both
    assert report["summary"]["grpo"]["held_out_before"] == report["summary"]["dr_grpo"]["held_out_before"]
    png = (tmp_path / "ablation.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_a_recipe_field_swept_with_a_ppo_recipe_preset(tmp_path):
    result = _ablate(
        "--recipe",
        "ppo_max",
        "--preset",
        "cpu-demo",
        "--sweep",
        "template=plain,simple",
        *TINY,
        "--template_kwargs",
        "{}",
        "--max_steps",
        "1",
        "--n_eval",
        "0",
        "--n_train",
        "16",
        "--output_dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert report["recipe"] == "ppo_max" and report["field"] == "template"
    assert [len(report["per_step"][v]) for v in ("plain", "simple")] == [1, 1]
    assert "held_out_after" not in report["summary"]["plain"]  # n_eval 0: no held-out evaluation


def test_a_bad_value_fails_before_any_value_trains(tmp_path):
    result = _ablate(
        "--sweep",
        "normalizer=grpo,no_such_normalizer",
        *TINY,
        "--max_steps",
        "1",
        "--n_eval",
        "0",
        "--output_dir",
        str(tmp_path),
        timeout=300,
    )
    assert result.returncode != 0
    assert "no_such_normalizer" in result.stderr and "grpo" in result.stderr
    assert not (tmp_path / "normalizer=grpo").exists()  # nothing trained


def test_sweep_must_name_a_config_field(tmp_path):
    result = _ablate("--sweep", "normaliser=grpo", *TINY, "--output_dir", str(tmp_path), timeout=300)
    assert result.returncode != 0
    assert "--sweep must be FIELD=v1,v2,... with FIELD a field of ZRLConfig, RecipeArguments or" in result.stderr


def test_seeds_give_per_step_intervals(tmp_path):
    result = _ablate(
        "--sweep",
        "normalizer=grpo,dr_grpo",
        "--seeds",
        "0,1",
        *TINY,
        "--max_steps",
        "2",
        "--n_eval",
        "4",
        "--output_dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert report["seeds"] == [0, 1] and "interval" in report
    for value in ("grpo", "dr_grpo"):
        by_seed = report["per_step_by_seed"][value]
        assert sorted(by_seed) == ["0", "1"]  # JSON keys
        for step, row in enumerate(report["per_step"][value], start=1):
            rewards = [by_seed[s][step - 1]["reward"] for s in ("0", "1")]
            assert row["step"] == step and row["seeds"] == 2
            assert row["reward"] == pytest.approx(sum(rewards) / 2)
            low, high = row["reward_ci"]
            assert low <= row["reward"] <= high  # a t interval over 2 seeds: mean ± 12.706 · sd / √2
            assert high - row["reward"] == pytest.approx(12.706 * abs(rewards[0] - rewards[1]) / 2**0.5 / 2**0.5)
        low, high = report["summary"][value]["held_out_after_ci"]
        assert low <= report["summary"][value]["held_out_after"] <= high
    assert "[" in result.stdout and "over seeds" in result.stdout  # the final table carries the intervals
    # one data split for every seed: the held-out rows (hence the "before" accuracy) are the same
    befores = [b for v in report["held_out_by_seed"].values() for b, _ in v.values()]
    assert len(set(befores)) == 1


def test_sweep_values_with_commas_as_a_json_list(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("zrl_recipe_ablate", ROOT / "recipes" / "ablate.py")
    ablate = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "zrl_recipe_ablate", ablate)  # its dataclasses look their module up
    spec.loader.exec_module(ablate)
    from zrl_plugins import ZRLConfig

    field, values = ablate.parse_sweep(
        'verifier_kwargs=[{"math_correct": {"extraction": "boxed", "mode": "correct_only"}}, "{}"]', ZRLConfig
    )
    assert field == "verifier_kwargs"
    assert [json.loads(v) for v in values] == [{"math_correct": {"extraction": "boxed", "mode": "correct_only"}}, {}]
    assert ablate.parse_sweep("normalizer=grpo,dr_grpo", ZRLConfig) == ("normalizer", ["grpo", "dr_grpo"])
    with pytest.raises(SystemExit, match="must be a JSON list"):
        ablate.parse_sweep('verifier_kwargs=[{"a": 1,', ZRLConfig)
