"""recipes/ablate.py on the tiny model: 2 normalizers x 2 steps, JSON and PNG written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_ablation_smoke(tmp_path):
    command = [
        sys.executable, str(ROOT / "recipes" / "ablate.py"), "--model_name_or_path", "tiny",
        "--sweep", "normalizer=grpo,dr_grpo", "--max_steps", "2", "--output_dir", str(tmp_path),
        "--use_cpu", "--bf16", "false", "--report_to", "none", "--per_device_train_batch_size", "8",
        "--num_generations", "4", "--max_completion_length", "8", "--save_strategy", "no",
        "--gradient_checkpointing", "false", "--logging_steps", "1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "ablation.json").read_text())
    assert report["field"] == "normalizer" and report["values"] == ["grpo", "dr_grpo"]
    for value in ("grpo", "dr_grpo"):
        rows = report["per_step"][value]
        assert [r["step"] for r in rows] == [1, 2]
        for row in rows:
            assert 0.0 <= row["accuracy"] <= 1.0
            assert row["length_correct"] is not None or row["length_incorrect"] is not None
    png = (tmp_path / "ablation.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_sweep_must_name_a_config_field(tmp_path):
    command = [sys.executable, str(ROOT / "recipes" / "ablate.py"), "--model_name_or_path", "tiny",
               "--sweep", "normaliser=grpo", "--output_dir", str(tmp_path), "--use_cpu", "--bf16", "false"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--sweep must be FIELD=v1,v2,... with FIELD a ZRLConfig field" in result.stderr
