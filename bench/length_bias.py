"""GRPO vs Dr. GRPO: do incorrect completions grow longer under GRPO's per-sequence length normalization?

Dr. GRPO (Liu et al. 2025) argues that GRPO's 1/|o_i| aggregation penalizes long incorrect completions less per
token, so incorrect responses grow longer, and that the constant L_max of `dr_grpo` removes this. This runs
``recipes/ablate.py`` with ``recipes/ablate_cpu_demo.yaml`` (SmolLM2-135M, a + b with room to explain, 64 tokens,
only the normalizer differs) and summarizes its ``ablation.json``:

    python -m bench.length_bias                                      # runs the ablation: ~30 min on 2 CPU cores
    python -m bench.length_bias --from outputs/ablation/ablation.json  # summarizes a finished one

Writes ``bench/results/length_bias_<model>.{json,md,png}``: per normalizer, accuracy, held-out greedy accuracy
before/after, and the mean length of correct and incorrect completions over the first and the last ``--window``
steps, with the dr_grpo / grpo ratio of the incorrect lengths.
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


def run_ablation(output_dir: Path) -> Path:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes" / "accelerate" / "cpu.yaml"), str(ROOT / "recipes" / "ablate.py"),
               "--config", str(ROOT / "recipes" / "ablate_cpu_demo.yaml"), "--sweep", "normalizer=grpo,dr_grpo",
               "--output_dir", str(output_dir)]  # fmt: skip
    subprocess.run(command, check=True)
    return output_dir / "ablation.json"


def window_mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return sum(values) / len(values) if values else None


def summarize(report: dict[str, Any], window: int) -> tuple[dict[str, Any], str]:
    lines = [
        f"| normalizer | accuracy, first {window} → last {window} steps | held-out greedy before → after | "
        f"length correct, first → last | length incorrect, first → last |",
        "|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {}

    def fmt(value: float | None, digits: int = 1) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    for value, rows in report["per_step"].items():
        first, last = rows[:window], rows[-window:]
        row = {
            f"{what}_{part}": window_mean(chunk, key)
            for what, key in (("accuracy", "accuracy"), ("length_correct", "length_correct"),
                              ("length_incorrect", "length_incorrect"))
            for part, chunk in (("first", first), ("last", last))
        }  # fmt: skip
        row.update({k: v for k, v in report["summary"][value].items() if k.startswith("held_out")})
        summary[value] = row
        lines.append(
            f"| {value} | {fmt(row['accuracy_first'], 2)} → {fmt(row['accuracy_last'], 2)} | "
            f"{fmt(row.get('held_out_before'), 2)} → {fmt(row.get('held_out_after'), 2)} | "
            f"{fmt(row['length_correct_first'])} → {fmt(row['length_correct_last'])} | "
            f"{fmt(row['length_incorrect_first'])} → {fmt(row['length_incorrect_last'])} |"
        )
    grpo, dr = summary.get("grpo", {}), summary.get("dr_grpo", {})
    if grpo.get("length_incorrect_last") and dr.get("length_incorrect_last") is not None:
        summary["incorrect_length_last_ratio_dr_grpo_over_grpo"] = (
            dr["length_incorrect_last"] / grpo["length_incorrect_last"]
        )
    steps = len(next(iter(report["per_step"].values())))
    shape = (f", {report['completions_per_step']} completions a step ({report['num_generations']} per prompt)"
             if "completions_per_step" in report else "")  # fmt: skip
    lines += ["", f"{report['model']}, {report['task']}, {steps} steps each, max {report['max_completion_length']} "
              f"tokens{shape}, same seed, data and starting model; lengths in tokens, means over the {window}-step "
              "windows."]  # fmt: skip
    ratio = summary.get("incorrect_length_last_ratio_dr_grpo_over_grpo")
    if ratio is not None:
        lines.append(f"Incorrect length over the last {window} steps, dr_grpo / grpo: {ratio:.3f}.")
    return summary, "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, help="an ablation.json to summarize instead of running")
    parser.add_argument("--window", type=int, default=5, help="steps averaged at the start and at the end")
    args = parser.parse_args()

    from bench.common import RESULTS, write_results

    with tempfile.TemporaryDirectory() as tmp:
        source = args.source or run_ablation(Path(tmp) / "ablation")
        report = json.loads(source.read_text())
        if report["field"] != "normalizer" or not {"grpo", "dr_grpo"} <= set(report["values"]):
            raise SystemExit(f"{source} is not a normalizer=grpo,dr_grpo ablation")
        summary, table = summarize(report, args.window)
        name = f"length_bias_{report['model']}"
        write_results(name, {"window": args.window, "summary": summary, "ablation": report}, table)
        shutil.copy(source.parent / "ablation.png", RESULTS / f"{name}.png")


if __name__ == "__main__":
    main()
