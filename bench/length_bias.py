"""GRPO vs Dr. GRPO: do incorrect completions grow longer under GRPO's per-sequence length normalization?

Dr. GRPO (Liu et al. 2025) argues that GRPO's 1/|o_i| aggregation penalizes long incorrect completions less per
token, so incorrect responses grow longer, and that the constant L_max of ``dr_grpo`` removes this. This runs
``recipes/ablate.py`` with ``recipes/ablate_cpu_demo.yaml`` on a task with room to ramble — generated word problems,
128 completion tokens by default — over several seeds (only the normalizer differs within a seed) and summarizes
its ``ablation.json``:

    python -m bench.length_bias                                     # 2 normalizers x 3 seeds: ~1 h on 2 CPU cores
    python -m bench.length_bias --seeds 0,1 --max_steps 6           # shorter
    python -m bench.length_bias --from outputs/ablation/ablation.json   # summarize a finished ablation

Per normalizer and seed: mean length of incorrect (and correct) completions over the first and the last
``--window`` steps; then the mean over seeds with its 95 % t interval, and the per-seed (paired: same seed, data
order and starting model) difference grpo − dr_grpo of the last-window incorrect length and of its growth
(last − first), with intervals. Writes ``bench/results/length_bias_<model>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# the study's defaults on top of recipes/ablate_cpu_demo.yaml (each can be changed with the flags of main())
TASK_FLAGS = ["--task", "word_problems", "--bf16", "true"]


def run_ablation(
    output_dir: Path,
    seeds: str,
    max_steps: int,
    max_completion_length: int,
    prompts: int,
    generations: int,
    n_eval: int,
    difficulty: int = 1,
) -> Path:
    command = [
        sys.executable,
        "-W",
        "ignore",
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "recipes" / "accelerate" / "cpu.yaml"),
        str(ROOT / "recipes" / "ablate.py"),
        "--config",
        str(ROOT / "recipes" / "ablate_cpu_demo.yaml"),
        "--sweep",
        "normalizer=grpo,dr_grpo",
        "--seeds",
        seeds,
        *TASK_FLAGS,
        "--task_difficulty",
        str(difficulty),
        "--max_steps",
        str(max_steps),
        "--max_completion_length",
        str(max_completion_length),
        "--per_device_train_batch_size",
        str(prompts * generations),
        "--num_generations",
        str(generations),
        "--n_eval",
        str(n_eval),
        "--output_dir",
        str(output_dir),
    ]
    subprocess.run(command, check=True, cwd=ROOT)
    return output_dir / "ablation.json"


def window_mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def per_seed(rows: list[dict[str, Any]], window: int) -> dict[str, float | None]:
    """One run's first- and last-window means of accuracy and of correct / incorrect lengths."""
    first, last = rows[:window], rows[-window:]
    out = {
        f"{key}_{part}": window_mean(chunk, key)
        for key in ("accuracy", "length_correct", "length_incorrect")
        for part, chunk in (("first", first), ("last", last))
    }
    if out["length_incorrect_first"] is not None and out["length_incorrect_last"] is not None:
        out["length_incorrect_growth"] = out["length_incorrect_last"] - out["length_incorrect_first"]
    return out


def summarize(report: dict[str, Any], window: int) -> tuple[dict[str, Any], str]:
    from zrl_plugins.framework.stats import mean_interval

    single = {v: {str(report["seed"]): rows} for v, rows in report["per_step"].items()}  # a one-seed ablation
    by_seed = report.get("per_step_by_seed") or single
    seeds = sorted(next(iter(by_seed.values())))
    runs = {value: {seed: per_seed(rows, window) for seed, rows in runs.items()} for value, runs in by_seed.items()}
    keys = (
        "accuracy_first",
        "accuracy_last",
        "length_correct_first",
        "length_correct_last",
        "length_incorrect_first",
        "length_incorrect_last",
        "length_incorrect_growth",
    )
    summary: dict[str, Any] = {"seeds": seeds, "window": window, "per_seed": runs}
    for value, seeded in runs.items():
        summary[value] = {}
        for key in keys:
            mean, low, high = mean_interval([seeded[s].get(key) for s in seeds])
            summary[value][key], summary[value][f"{key}_ci"] = mean, [low, high]
        held = report.get("summary", {}).get(value, {})
        summary[value].update({k: v for k, v in held.items() if k.startswith("held_out")})
    paired = {}
    for key in ("length_incorrect_last", "length_incorrect_growth"):
        diffs = [
            runs["grpo"][s].get(key) - runs["dr_grpo"][s].get(key)
            for s in seeds
            if runs["grpo"][s].get(key) is not None and runs["dr_grpo"][s].get(key) is not None
        ]
        mean, low, high = mean_interval(diffs)
        paired[key] = {"grpo_minus_dr_grpo": mean, "ci": [low, high], "per_seed": diffs}
    summary["paired_difference"] = paired

    def cell(s: dict[str, Any], key: str, digits: int = 1) -> str:
        if s.get(key) is None:
            return "–"
        low, high = s.get(f"{key}_ci", [None, None])
        interval = f" [{low:.{digits}f}, {high:.{digits}f}]" if len(seeds) > 1 and low is not None else ""
        return f"{s[key]:.{digits}f}{interval}"

    lines = [
        f"| normalizer | accuracy, first {window} → last {window} steps | held-out greedy before → after | "
        "length correct, first → last | length incorrect, first → last | growth of incorrect length |",
        "|---|---|---|---|---|---|",
    ]
    for value in ("grpo", "dr_grpo"):
        s = summary[value]
        lines.append(
            f"| {value} | {cell(s, 'accuracy_first', 2)} → {cell(s, 'accuracy_last', 2)} | "
            f"{cell(s, 'held_out_before', 2)} → {cell(s, 'held_out_after', 2)} | "
            f"{cell(s, 'length_correct_first')} → {cell(s, 'length_correct_last')} | "
            f"{cell(s, 'length_incorrect_first')} → {cell(s, 'length_incorrect_last')} | "
            f"{cell(s, 'length_incorrect_growth')} |"
        )
    steps = len(next(iter(report["per_step"].values())))
    lines += [
        "",
        f"{report['model']}, {report['task']}, {steps} steps each, max {report['max_completion_length']} "
        f"tokens, {report.get('completions_per_step')} completions a step ({report.get('num_generations')} per "
        f"prompt), seeds {seeds}: mean [95 % t interval over seeds]; lengths in tokens, means over the "
        f"{window}-step windows; within a seed only the normalizer differs.",
    ]
    for key, label in (
        ("length_incorrect_last", "incorrect length over the last steps"),
        ("length_incorrect_growth", "growth of the incorrect length"),
    ):
        p = paired[key]
        if p["grpo_minus_dr_grpo"] is not None:
            low, high = p["ci"]
            verdict = (
                "one seed: no interval"
                if len(p["per_seed"]) < 2
                else "longer under grpo"
                if low > 0
                else "longer under dr_grpo"
                if high < 0
                else "no difference resolved at this many seeds"
            )
            lines.append(
                f"Paired grpo − dr_grpo, {label}: {p['grpo_minus_dr_grpo']:+.1f} tokens "
                f"[{low:+.1f}, {high:+.1f}] — {verdict}."
            )
    return summary, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, help="an ablation.json to summarize instead of running")
    parser.add_argument("--window", type=int, default=5, help="steps averaged at the start and at the end")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--max_completion_length", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--generations", type=int, default=4, help="completions per prompt")
    parser.add_argument("--n_eval", type=int, default=100)
    parser.add_argument(
        "--task_difficulty",
        type=int,
        default=1,
        help="steps per word problem; SmolLM2-135M solves ~2 %% of 2-step ones: too few correct "
        "completions for a group to carry a gradient",
    )
    args = parser.parse_args()

    from bench.common import RESULTS, write_results

    with tempfile.TemporaryDirectory() as tmp:
        source = args.source or run_ablation(
            Path(tmp) / "ablation",
            args.seeds,
            args.max_steps,
            args.max_completion_length,
            args.prompts,
            args.generations,
            args.n_eval,
            args.task_difficulty,
        )
        report = json.loads(source.read_text())
        if report["field"] != "normalizer" or not {"grpo", "dr_grpo"} <= set(report["values"]):
            raise SystemExit(f"{source} is not a normalizer=grpo,dr_grpo ablation")
        summary, table = summarize(report, args.window)
        name = f"length_bias_{report['model']}"
        write_results(name, {"summary": summary, "ablation": report}, table)
        shutil.copy(source.parent / "ablation.png", RESULTS / f"{name}.png")


if __name__ == "__main__":
    main()
