"""Ablation runner: one recipe config, one field swept over several values, same seed and data for each.

    accelerate launch recipes/ablate.py --config recipes/ablate_cpu_demo.yaml --sweep normalizer=grpo,dr_grpo,lite_ppo
    python recipes/ablate.py --model_name_or_path tiny --sweep normalizer=grpo,dr_grpo --max_steps 2 --output_dir out

Writes ``<output_dir>/ablation.json`` and ``<output_dir>/ablation.png``: per step and per value, the mean reward,
the accuracy (fraction of completions the first verifier scores >= 1, i.e. correct), and the mean length (tokens) of
correct and of incorrect completions. Any ZRLConfig field can be swept (``kl_penalty=k3,none``, ``beta=0,0.001``).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing, too

from zrl_plugins import ZRLConfig, ZRLGRPOTrainer, hookimpl
from zrl_plugins.models import resolve_model
from zrl_plugins.plugins import ZRLPluginManager


@dataclass
class AblationArguments:
    sweep: str = field(metadata={"help": "The field and its values: `normalizer=grpo,dr_grpo,lite_ppo`."})
    model_name_or_path: str = field(
        default="smollm2",
        metadata={"help": "A local model path or hub id; `smollm2` = the embedded SmolLM2-135M-Instruct; `tiny` = a "
                  "tiny random Llama built offline (smoke tests)."},
    )  # fmt: skip
    task: str = field(default="addition", metadata={"help": "Built-in generated task: `addition` (a + b, a, b <= 20)."})


class StepRecorder:
    """Observer plugin: per training step, reward, accuracy and mean lengths of correct / incorrect completions."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    @hookimpl
    def zrl_on_rollout_batch(self, trainer, batch):
        if batch["mode"] != "train":
            return
        lengths = trainer.accelerator.gather(batch["completion_mask"].sum(-1)).float().cpu()
        correct = (batch["rewards_per_func"][:, 0] >= 1.0).cpu()
        rewards = batch["rewards"].cpu()

        def mean(values):
            return float(values.mean()) if values.numel() else None

        self.rows.append(
            {
                "step": batch["step"] + 1,
                "reward": float(rewards.nanmean()),
                "accuracy": float(correct.float().mean()),
                "length_correct": mean(lengths[correct]),
                "length_incorrect": mean(lengths[~correct]),
            }
        )


def parse_value(base: Any, text: str) -> Any:
    """A swept value in the type of the field's default."""
    if isinstance(base, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(base, int | float) and not isinstance(base, bool):
        return type(base)(float(text)) if isinstance(base, int) and "." not in text else float(text)
    if isinstance(base, dict):
        return json.loads(text)
    return text


def dataset(task: str, chat: bool):
    from datasets import Dataset

    from zrl_plugins.data import addition_splits

    if task != "addition":
        raise ValueError(f"unknown task {task!r}; built-in tasks: addition")
    train, _ = addition_splits(n_eval=50, chat=chat)
    return Dataset.from_list(train)


def plot(results: dict[str, list[dict[str, Any]]], field_name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("reward", "mean reward"), ("accuracy", "accuracy"), ("length_correct", "mean length, correct"),
              ("length_incorrect", "mean length, incorrect")]  # fmt: skip
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for ax, (key, title) in zip(axes.flat, panels):
        for value, rows in results.items():
            points = [(r["step"], r[key]) for r in rows if r[key] is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=f"{field_name}={value}")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    def mean(key):
        values = [r[key] for r in rows if r[key] is not None]
        return sum(values) / len(values) if values else None

    return {f"mean_{k}": mean(k) for k in ("reward", "accuracy", "length_correct", "length_incorrect")}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from zrl_plugins.config import parse_config

    ablation, base = parse_config((AblationArguments, ZRLConfig), argv)
    field_name, _, values_text = ablation.sweep.partition("=")
    if not hasattr(base, field_name) or not values_text:
        raise SystemExit(f"--sweep must be FIELD=v1,v2,... with FIELD a ZRLConfig field; got {ablation.sweep!r}")
    values = values_text.split(",")
    model = resolve_model(ablation.model_name_or_path, base.output_dir)
    data = dataset(ablation.task, chat=ablation.model_name_or_path != "tiny")
    if not base.verifiers:
        base.verifiers = ["last_number"]

    results: dict[str, list[dict[str, Any]]] = {}
    for value in values:
        config = copy.deepcopy(base)
        setattr(config, field_name, parse_value(getattr(base, field_name), value))
        config.output_dir = str(Path(base.output_dir) / f"{field_name}={value}")
        recorder = StepRecorder()
        plugins = ZRLPluginManager()
        plugins.register_plugin(recorder, name="ablation-recorder")
        trainer = ZRLGRPOTrainer(model, args=config, train_dataset=data, plugin_manager=plugins)
        trainer.train()
        results[value] = recorder.rows
        del trainer

    out = Path(base.output_dir)
    report = {
        "field": field_name,
        "values": values,
        "seed": base.seed,
        "model": ablation.model_name_or_path,
        "task": ablation.task,
        "max_steps": base.max_steps,
        "summary": {value: summarize(rows) for value, rows in results.items()},
        "per_step": results,
    }
    from accelerate import PartialState

    if PartialState().is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "ablation.json").write_text(json.dumps(report, indent=2))
        plot(results, field_name, out / "ablation.png")
        print(json.dumps(report["summary"], indent=2))
        print(f"wrote {out / 'ablation.json'} and {out / 'ablation.png'}")
    return report


if __name__ == "__main__":
    from zrl_plugins.distributed import shutdown_distributed

    main()
    shutdown_distributed()
