"""Two SimpleRL-Zoo findings on SmolLM2-135M, over several seeds, with the seeded ablation runner.

SimpleRL-Zoo (Zeng et al. 2025) reports that for weak base models (1) a correctness-only reward works better than a
format-aware one that penalises answers outside ``\\boxed{}``, and (2) a simple prompt works better than a chat
prompt that demands the boxed format ("strict format pressure hampers exploration"). Both are re-tested here on
SmolLM2-135M-Instruct with a + b problems, through ``recipes/ablate.py --recipe simplerl_zoo --seeds``:

    python -m bench.simplerl_findings                          # 2 findings x 2 values x 3 seeds, ~1 h on 2 cores
    python -m bench.simplerl_findings --only reward --seeds 0,1 --max_steps 6

- ``reward``: template ``chat_boxed``, verifier ``math_correct`` with ``extraction: boxed``; ``mode: correct_only``
  (1 / 0) vs ``mode: format_aware`` (1 / −0.5 wrong / −1 no boxed answer).
- ``template``: verifier ``math_correct`` (``extraction: auto``, correctness only); template ``simple`` (plain text,
  "Let's think step by step") vs ``chat_boxed`` (chat, "put your final answer within \\boxed{}").

Held-out greedy accuracy counts a completion as correct when the run's own verifier scores it ≥ 1, so the reward
shaping does not change what accuracy means. Reported per value: held-out greedy accuracy after training and the
training accuracy over the last 5 steps (mean and 95 % t interval over seeds), and the paired (same seed) difference
of held-out accuracy between the two values. Writes ``bench/results/simplerl_findings_<model>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BOXED = {"extraction": "boxed"}
STUDIES: dict[str, dict[str, Any]] = {
    "reward": {
        "claim": "correctness-only reward beats a format-aware one on a weak model",
        "flags": ["--template", "chat_boxed", "--verifiers", "math_correct"],
        "sweep": "verifier_kwargs="
        + json.dumps(
            [{"math_correct": {**BOXED, "mode": "correct_only"}}, {"math_correct": {**BOXED, "mode": "format_aware"}}]
        ),
        "labels": ["correct_only", "format_aware"],
    },
    "template": {
        "claim": "the simple prompt beats the boxed chat prompt on a weak model",
        "flags": [
            "--verifiers",
            "math_correct",
            "--verifier_kwargs",
            json.dumps({"math_correct": {"extraction": "auto", "mode": "correct_only"}}),
        ],
        "sweep": "template=simple,chat_boxed",
        "labels": ["simple", "chat_boxed"],
    },
}


def run_study(name: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    study = STUDIES[name]
    command = [
        sys.executable,
        "-W",
        "ignore",
        str(ROOT / "recipes" / "ablate.py"),
        "--recipe",
        "simplerl_zoo",
        "--preset",
        "cpu-demo",
        "--template_kwargs",
        "{}",
        *study["flags"],
        "--sweep",
        study["sweep"],
        "--seeds",
        args.seeds,
        "--max_steps",
        str(args.max_steps),
        "--max_completion_length",
        str(args.max_completion_length),
        "--per_device_train_batch_size",
        str(args.prompts * args.generations),
        "--num_generations",
        str(args.generations),
        "--n_eval",
        str(args.n_eval),
        "--bf16",
        "true",
        "--output_dir",
        str(out),
    ]
    print(f"[simplerl_findings] {name}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads((out / "ablation.json").read_text())


def summarize(name: str, report: dict[str, Any]) -> dict[str, Any]:
    from zrl_plugins.framework.stats import mean_interval

    labels = dict(zip(report["values"], STUDIES[name]["labels"], strict=True))
    seeds = [str(s) for s in report["seeds"]]
    result: dict[str, Any] = {"claim": STUDIES[name]["claim"], "seeds": report["seeds"], "values": {}}
    for value, label in labels.items():
        last5 = [
            sum(r["accuracy"] for r in rows[-5:]) / len(rows[-5:])
            for rows in report["per_step_by_seed"][value].values()
        ]
        mean, low, high = mean_interval(last5)
        s = report["summary"][value]
        result["values"][label] = {
            "held_out_before": s.get("held_out_before"),
            "held_out_after": s.get("held_out_after"),
            "held_out_after_ci": s.get("held_out_after_ci"),
            "train_accuracy_last5": mean,
            "train_accuracy_last5_ci": [low, high],
            "mean_reward": s.get("mean_reward"),
            "per_seed_held_out": report["held_out_by_seed"].get(value),
        }
    first, second = report["values"]
    by_seed = report["held_out_by_seed"]
    diffs = [
        by_seed[first][s][1] - by_seed[second][s][1]
        for s in seeds
        if s in by_seed.get(first, {}) and s in by_seed.get(second, {})
    ]
    mean, low, high = mean_interval(diffs)
    result["paired_held_out_after_difference"] = {
        "of": f"{labels[first]} − {labels[second]}",
        "mean": mean,
        "ci": [low, high],
        "per_seed": diffs,
    }
    return result


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    def cell(mean: float | None, ci: list | None) -> str:
        if mean is None:
            return "–"
        return f"{mean:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else "")

    lines = [
        "| finding (SimpleRL-Zoo) | value | held-out greedy before → after | training accuracy, last 5 steps | "
        "paired difference of held-out after | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for r in results.values():
        d = r["paired_held_out_after_difference"]
        low, high = d["ci"]
        if d["mean"] is None or len(d["per_seed"]) < 2:
            verdict = "one seed: no interval"
        elif low > 0:
            verdict = f"holds: {d['of'].split(' − ')[0]} better"
        elif high < 0:
            verdict = f"reversed: {d['of'].split(' − ')[1]} better"
        else:
            verdict = "not resolved at this many seeds"
        for i, (label, v) in enumerate(r["values"].items()):
            before = "–" if v["held_out_before"] is None else f"{v['held_out_before']:.3f}"
            diff = f"{d['of']}: {cell(d['mean'], d['ci'])}" if i == 0 else ""
            lines.append(
                f"| {r['claim'] if i == 0 else ''} | {label} | {before} → "
                f"{cell(v['held_out_after'], v['held_out_after_ci'])} | "
                f"{cell(v['train_accuracy_last5'], v['train_accuracy_last5_ci'])} | {diff} | "
                f"{verdict if i == 0 else ''} |"
            )
    lines += [
        "",
        f"SmolLM2-135M-Instruct, a + b, recipe simplerl_zoo (grpo, no KL), {args.max_steps} steps of "
        f"{args.prompts} prompts × {args.generations}, {args.max_completion_length} tokens, bf16 autocast, "
        f"{args.n_eval} held-out problems; seeds {args.seeds}: mean [95 % t interval over seeds]; correct = "
        "verifier score ≥ 1.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(STUDIES), action="append")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max_steps", type=int, default=15)
    parser.add_argument("--max_completion_length", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--n_eval", type=int, default=100)
    args = parser.parse_args(argv)
    from bench.common import RESULTS, write_results

    path = RESULTS / "simplerl_findings_smollm2.json"
    results = json.loads(path.read_text()).get("findings", {}) if path.exists() else {}
    for name in args.only or list(STUDIES):
        with tempfile.TemporaryDirectory() as tmp:
            results[name] = summarize(name, run_study(name, Path(tmp) / name, args))
        write_results("simplerl_findings_smollm2", {"findings": results, "settings": vars(args)}, table(results, args))
    return results


if __name__ == "__main__":
    main()
