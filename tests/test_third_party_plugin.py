"""A third-party plugin in its own directory, installed with pip, works with no change to zrl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "zrl-example-plugin"

TRAIN_SCRIPT = """
import sys
from datasets import Dataset
from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
model_path, out = sys.argv[1], sys.argv[2]
ds = Dataset.from_list([{"prompt": f"What is {a} + 1?", "answer": str(a + 1)} for a in range(8)])
args = ZRLConfig(output_dir=out, verifiers=["short_answer"], verifier_kwargs={"short_answer": {"max_words": 1}},
                 normalizer="mean_baseline", kl_penalty="none", per_device_train_batch_size=8, num_generations=4,
                 max_completion_length=6, max_steps=1, report_to=[], use_cpu=True, bf16=False, save_strategy="no",
                 gradient_checkpointing=False, logging_steps=1)
trainer = ZRLGRPOTrainer(model_path, args=args, train_dataset=ds)
assert type(trainer.normalizer).__module__ == "zrl_example_plugin", type(trainer.normalizer)
trainer.train()
print("REWARD_KEYS", [k for k in trainer.state.log_history[0] if k.startswith("rewards/")])
"""


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    return env


def test_pip_installed_plugin_is_listed(installed_plugin):
    out = subprocess.run(
        [sys.executable, "-m", "zrl_plugins.apps.cli", "plugins", "--json"],
        env=installed_plugin,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    components = {(c["kind"], c["name"]): c for c in json.loads(out)["components"]}
    assert components[("verifier", "short_answer")]["distribution"] == "zrl-example-plugin"
    assert components[("normalizer", "mean_baseline")]["version"] == "0.1.0"


def test_pip_installed_plugin_is_selected_by_name(installed_plugin, tiny_model_path, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, tiny_model_path, str(tmp_path / "out")],
        env=installed_plugin,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REWARD_KEYS ['rewards/short_answer/mean', 'rewards/short_answer/std']" in result.stdout


def test_without_the_install_the_name_is_unknown(tiny_model_path, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, tiny_model_path, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "unknown normalizer 'mean_baseline'" in result.stderr or "unknown verifier 'short_answer'" in result.stderr
