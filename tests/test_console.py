"""What a person watching a run sees: one short line per step, never the raw metrics dict."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from tests.helpers import tiny_config
from zrl_plugins.apps.console import MAX_LINE, ConsoleProgress, step_line


def test_step_line_fields_and_width():
    line = step_line(
        3,
        14,
        {"reward": 0.4213, "completions/mean_length": 12.34, "accuracy": 0.5, "kl": 0.00123},
        seconds_per_step=21.44,
        eta=192,
    )
    assert line == "step 3/14 | reward 0.421 | acc 0.500 | len 12.3 | kl 0.0012 | 21.4 s/step | ETA 3:12"
    assert step_line(1, 2, {}, None, None) == "step 1/2"
    assert step_line(5, 9, {"reward": 1.0}, 1.0, 3725).endswith("ETA 1:02:05")
    assert len(step_line(1, 10**150, {"reward": 0.5}, 1.0, 10.0)) == MAX_LINE  # never wider than the console


def test_a_trainer_with_the_console_prints_one_line_per_step(tmp_path, tiny_model_path, arithmetic_dataset):
    from tests.helpers import char_count_reward
    from zrl_plugins import ZRLGRPOTrainer
    from zrl_plugins.apps.console import use_console

    trainer = ZRLGRPOTrainer(
        tiny_model_path,
        char_count_reward,
        args=tiny_config(tmp_path, max_steps=3, disable_tqdm=False),
        train_dataset=arithmetic_dataset,
    )
    stream = io.StringIO()
    use_console(trainer, "unit")
    console = next(c for c in trainer.callback_handler.callbacks if isinstance(c, ConsoleProgress))
    console.stream = stream
    trainer.train()
    lines = stream.getvalue().splitlines()
    steps, rest = lines[:-1], lines[-1]
    assert [line.split(" | ")[0] for line in steps] == ["[unit] step 1/3", "[unit] step 2/3", "[unit] step 3/3"]
    assert all("reward" in line and "s/step" in line and len(line) <= MAX_LINE for line in steps)
    assert rest.startswith("[unit] done: 3 steps in ")
    assert "clip_ratio/region_mean" in trainer.state.log_history[0]  # every metric is still recorded


def test_the_demo_prints_short_lines_and_one_per_step(tmp_path, tiny_model_path):
    """`python -m zrl_plugins.demo --max_steps 2 --n_eval 16` (on the tiny model instead of SmolLM2): the device
    line, accuracies with their intervals, a line per step, nothing wider than 160 characters."""
    import shutil

    from transformers import AutoTokenizer

    model = tmp_path / "tiny-chat"
    shutil.copytree(tiny_model_path, model)
    tokenizer = AutoTokenizer.from_pretrained(model)  # the demo's prompts are chat messages: give it a template
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tokenizer.save_pretrained(model)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "zrl_plugins.demo",
            "--model",
            str(model),
            "--max_steps",
            "2",
            "--n_eval",
            "16",
            "--n_validation",
            "8",
            "--max_completion_length",
            "6",
            "--prompts_per_step",
            "2",
            "--num_generations",
            "4",
            "--output_dir",
            "out",
            "--eval_every",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert max(len(line) for line in lines) <= 160, max(lines, key=len)
    steps = [line for line in lines if line.startswith("[demo] step ")]
    assert [line.split(" | ")[0] for line in steps] == ["[demo] step 1/2", "[demo] step 2/2"]
    assert lines[0].startswith("device: CPU")
    assert any("greedy accuracy before" in line and "95% CI" in line for line in lines)
    assert not any("{'loss'" in line for line in lines)  # never the raw metrics dict
    assert (tmp_path / "out" / "summary.json").exists() and (tmp_path / "out" / "reward_curve.png").exists()
    curve = json.loads((tmp_path / "out" / "summary.json").read_text())["accuracy_during_training"]
    assert sorted(curve, key=int) == ["0", "1", "2"]  # the held-out curve the plot draws
