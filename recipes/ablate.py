"""Ablation runner: one recipe config, one field swept over several values, same seed, data and model for each.

    accelerate launch --config_file recipes/accelerate/cpu.yaml recipes/ablate.py \\
        --recipe dr_grpo --preset cpu-demo --sweep normalizer=grpo,dr_grpo,lite_ppo
    accelerate launch recipes/ablate.py --recipe simplerl_zoo --config recipes/simplerl_zoo.yaml \\
        --sweep template=simple,chat_boxed
    python recipes/ablate.py --model_name_or_path tiny --sweep normalizer=grpo,dr_grpo --max_steps 2 --output_dir out

Any field of the recipe's config, its ``RecipeArguments`` or the model flags can be swept (``kl_penalty=k3,none``,
``beta=0,0.001``, ``template=simple,chat_boxed``); each value is applied as the command-line flag ``--FIELD VALUE``
after the config, so it is parsed exactly as that flag would be. Writes ``<output_dir>/ablation.json`` and
``<output_dir>/ablation.png``: per step and per value, the mean reward, the accuracy (fraction of completions the
first verifier scores >= 1, i.e. correct), the mean length (tokens) of correct and of incorrect completions, and,
when ``n_eval`` > 0, held-out greedy accuracy before and after each run. Each value's trainer output goes to
``<output_dir>/FIELD=VALUE``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from zrl_plugins import hookimpl
from zrl_plugins.apps.model_loading import RecipeModelConfig
from zrl_plugins.apps.plots import MISSING_MATPLOTLIB, pyplot
from zrl_plugins.apps.recipe import RecipeArguments, expand_preset, held_out_results, prepare, trainer_family
from zrl_plugins.framework.stats import mean_interval
from zrl_plugins.trainers.config import parse_config

DEFAULT_RECIPE = "dr_grpo"


@dataclass
class AblationArguments:
    sweep: str = field(
        metadata={"help": "The field and its values: `normalizer=grpo,dr_grpo,lite_ppo` (any config or recipe field)."}
    )
    recipe: str = field(
        default=DEFAULT_RECIPE,
        metadata={
            "help": "The recipe whose trainer, presets (`--preset cpu-demo`) and defaults are used: "
            "simplerl_zoo, dr_grpo, lite_ppo, ppo_max, nested_reft."
        },
    )
    seeds: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated training seeds: every value runs once per seed, on one data split (the "
            "config's seed), and the report gives per-step means with 95 % t intervals over seeds."
        },
    )


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


def parse_sweep(sweep: str, config_class: type) -> tuple[str, list[str]]:
    """``FIELD=v1,v2`` → (FIELD, [v1, v2]); values that contain commas (JSON objects) as a JSON list:
    ``FIELD=[{"a": 1, "b": 2}, {"a": 3}]``. FIELD must be a field of the recipe's config, of RecipeArguments or of
    the model flags (RecipeModelConfig)."""
    field_name, _, values_text = sweep.partition("=")
    known = {f.name for t in (config_class, RecipeArguments, RecipeModelConfig) for f in fields(t)}
    if values_text.lstrip().startswith("["):
        try:
            parsed = json.loads(values_text)
        except json.JSONDecodeError as error:
            raise SystemExit(f"--sweep {field_name}=[...] must be a JSON list: {error}") from None
        values = [v if isinstance(v, str) else json.dumps(v) for v in parsed]
    else:
        values = [v for v in values_text.split(",") if v]
    if field_name not in known or not values:
        raise SystemExit(
            f"--sweep must be FIELD=v1,v2,... with FIELD a field of {config_class.__name__}, RecipeArguments or "
            "RecipeModelConfig; "
            f"got {sweep!r}"
        )
    return field_name, values


METRICS = ("reward", "accuracy", "length_correct", "length_incorrect")


def per_step_intervals(by_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per step: each metric's mean over seeds and its 95 % t interval (``<metric>_ci``)."""
    steps = sorted({r["step"] for rows in by_seed.values() for r in rows})
    table = []
    for step in steps:
        row: dict[str, Any] = {"step": step, "seeds": 0}
        for key in METRICS:
            values = [r[key] for rows in by_seed.values() for r in rows if r["step"] == step]
            mean, low, high = mean_interval(values)
            row[key], row[f"{key}_ci"] = mean, [low, high]
            row["seeds"] = max(row["seeds"], len(values))
        table.append(row)
    return table


def plot(results: dict[str, list[dict[str, Any]]], field_name: str, path: Path, seeds: int) -> bool:
    """Write the figure; ``False`` (after one line saying so) when matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        print(MISSING_MATPLOTLIB.format(path=path), file=sys.stderr, flush=True)
        return False

    panels = [
        ("reward", "mean reward"),
        ("accuracy", "accuracy"),
        ("length_correct", "mean length, correct"),
        ("length_incorrect", "mean length, incorrect"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for ax, (key, title) in zip(axes.flat, panels):
        for value, rows in results.items():
            points = [(r["step"], r[key], *r[f"{key}_ci"]) for r in rows if r[key] is not None]
            if not points:
                continue
            steps, means, lows, highs = zip(*points)
            (line,) = ax.plot(steps, means, marker="o", markersize=3, label=f"{field_name}={value}")
            if seeds > 1:
                ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(title + (f" (mean, 95 % interval over {seeds} seeds)" if seeds > 1 else ""), fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def summarize(by_seed: dict[int, list[dict[str, Any]]], held_out: dict[int, tuple[float, float]]) -> dict[str, Any]:
    """Per value: each metric averaged over the run's steps, then mean and 95 % t interval over seeds; held-out
    greedy accuracy before/after likewise."""

    def run_mean(rows: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return sum(values) / len(values) if values else None

    summary: dict[str, Any] = {}
    for key in METRICS:
        mean, low, high = mean_interval([run_mean(rows, key) for rows in by_seed.values()])
        summary[f"mean_{key}"], summary[f"mean_{key}_ci"] = mean, [low, high]
    for i, when in enumerate(("before", "after")):
        if held_out:
            mean, low, high = mean_interval([pair[i] for pair in held_out.values()])
            summary[f"held_out_{when}"], summary[f"held_out_{when}_ci"] = mean, [low, high]
    return summary


def table(summary: dict[str, dict[str, Any]], field_name: str, seeds: list[int]) -> str:
    def cell(s: dict[str, Any], key: str, digits: int) -> str:
        if s.get(key) is None:
            return "–"
        low, high = s[f"{key}_ci"]
        return f"{s[key]:.{digits}f}" + (f" [{low:.{digits}f}, {high:.{digits}f}]" if len(seeds) > 1 else "")

    header = "| reward | accuracy | length correct | length incorrect | held-out before | held-out after |"
    lines = [f"| {field_name} {header}", "|---|---|---|---|---|---|---|"]
    for value, s in summary.items():
        lines.append(
            f"| {value} | {cell(s, 'mean_reward', 3)} | {cell(s, 'mean_accuracy', 3)} | "
            f"{cell(s, 'mean_length_correct', 1)} | {cell(s, 'mean_length_incorrect', 1)} | "
            f"{cell(s, 'held_out_before', 3)} | {cell(s, 'held_out_after', 3)} |"
        )
    note = f"seeds {seeds}: mean [95 % t interval over seeds]" if len(seeds) > 1 else f"seed {seeds[0]}"
    return "\n".join(lines) + f"\n\nMeans over each run's steps; {note}."


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from accelerate import PartialState

    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_flag = argparse.ArgumentParser(add_help=False)
    recipe_flag.add_argument("--recipe", default=DEFAULT_RECIPE)
    known, _ = recipe_flag.parse_known_args(argv)
    config_class, _ = trainer_family(known.recipe)
    base_recipe, base, base_model, ablation = parse_config(
        (RecipeArguments, config_class, RecipeModelConfig, AblationArguments), expand_preset(known.recipe, argv)
    )
    if ablation.recipe != known.recipe:  # the recipe picks the config class, so it cannot come from the YAML
        raise SystemExit(f"pass the recipe on the command line (--recipe {ablation.recipe}), not in the config")
    field_name, values = parse_sweep(ablation.sweep, config_class)
    out = Path(base.output_dir)
    state = PartialState()

    seeds = [int(x) for x in ablation.seeds.split(",")] if ablation.seeds else [base.seed]
    by_seed: dict[str, dict[int, list[dict[str, Any]]]] = {}
    held_out: dict[str, dict[int, tuple[float, float]]] = {}
    before_by_rows: dict[str, float] = {}  # a value that changes the held-out rows or verifier gets its own "before"
    runs = {}  # every value × seed is parsed and its rows built before any trains: a bad value fails at once
    for value in values:
        for seed in seeds:
            value_argv = [
                *argv,
                f"--{field_name}",
                value,
                "--seed",
                str(seed),
                "--split_seed",
                str(base.seed),
                "--output_dir",
                str(out / f"{field_name}={value}" / f"seed={seed}"),
            ]
            runs[value, seed] = prepare(
                known.recipe, value_argv, extra_dataclasses=(AblationArguments,), model_workdir=str(out)
            )
    for (value, seed), run in runs.items():
        key = json.dumps([run.eval_rows, run.config.verifiers, run.config.verifier_kwargs], default=str)
        recorder = StepRecorder()
        trainer = run.trainer(observers=[recorder], before=before_by_rows.get(key))
        trainer.train()
        by_seed.setdefault(value, {})[seed] = recorder.rows
        result = held_out_results(trainer)
        if result is not None:
            before_by_rows[key] = result.before
            held_out.setdefault(value, {})[seed] = (result.before, result.after)
        del trainer
    results = {value: per_step_intervals(rows) for value, rows in by_seed.items()}
    summary = {value: summarize(rows, held_out.get(value, {})) for value, rows in by_seed.items()}

    report = {
        "recipe": known.recipe,
        "field": field_name,
        "values": values,
        "seed": base.seed,
        "seeds": seeds,
        "interval": "95 % Student-t interval of the mean over seeds (per step, and of each run's step mean)",
        "model": base_model.model_name_or_path,
        "task": base_recipe.task,
        "template": base_recipe.template,
        "max_steps": base.max_steps,
        "max_completion_length": base.max_completion_length,
        "completions_per_step": base.per_device_train_batch_size
        * base.gradient_accumulation_steps
        * state.num_processes,
        "num_generations": base.num_generations,
        "held_out_problems": base_recipe.n_eval,
        "summary": summary,
        "per_step": results,
        "per_step_by_seed": by_seed,
        "held_out_by_seed": held_out,
    }
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "ablation.json").write_text(json.dumps(report, indent=2))
        plotted = plot(results, field_name, out / "ablation.png", len(seeds))
        print(table(summary, field_name, seeds))
        print(f"wrote {out / 'ablation.json'}" + (f" and {out / 'ablation.png'}" if plotted else ""))
    return report


if __name__ == "__main__":
    from zrl_plugins.apps.distributed import shutdown_distributed

    main()
    shutdown_distributed()
