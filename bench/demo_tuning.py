"""How the main job's settings were chosen: demo variants measured on the VALIDATION split (problems taken out of
the training set), never on the held-out problems the demo reports.

python -m bench.demo_tuning                       # every variant below, one after another (~10 min each on 2 cores)
python -m bench.demo_tuning --only lr5e-5,lr1e-4

Each variant is one ``python -m zrl_plugins.apps.demo --evaluate_on validation ...`` run in its own process; the table
gives greedy validation accuracy before → after (95 % Wilson intervals), seconds per step and wall minutes.
Writes ``bench/results/demo_tuning.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

VARIANTS: dict[str, list[str]] = {
    "lr2e-5": ["--learning_rate", "2e-5"],
    "lr5e-5": ["--learning_rate", "5e-5"],
    "lr1e-4": ["--learning_rate", "1e-4"],
    "lr5e-5_8x4": ["--learning_rate", "5e-5", "--prompts_per_step", "8", "--num_generations", "4"],
    "lr5e-5_4x4": ["--learning_rate", "5e-5", "--num_generations", "4"],
    "lr2e-5_4x4": ["--learning_rate", "2e-5", "--num_generations", "4"],
    "lr2e-5_4x4_45steps": ["--learning_rate", "2e-5", "--num_generations", "4", "--max_steps", "45"],
    "lr3e-5_4x4": ["--learning_rate", "3e-5", "--num_generations", "4"],
    "lr5e-5_fp32": ["--learning_rate", "5e-5", "--precision", "fp32"],
    "lr5e-5_default_system": ["--learning_rate", "5e-5", "--system_prompt", "default"],
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    parser.add_argument("--max_steps", type=int, default=30)
    parser.add_argument("--n_validation", type=int, default=100)
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(VARIANTS)
    results = {}
    from bench.common import RESULTS, write_results

    previous = RESULTS / "demo_tuning.json"
    if previous.exists():  # variants run earlier are kept, so the table can be built up variant by variant
        results = json.loads(previous.read_text()).get("variants", {})
    for name in names:
        out = Path(tempfile.mkdtemp(prefix=f"demo-{name}-"))
        command = [
            sys.executable,
            "-m",
            "zrl_plugins.apps.demo",
            "--evaluate_on",
            "validation",
            "--n_validation",
            str(args.n_validation),
            "--max_steps",
            str(args.max_steps),
            "--output_dir",
            str(out),
            *VARIANTS[name],
        ]
        print(f"[demo_tuning] {name}: {' '.join(command[3:])}", flush=True)
        subprocess.run(command, check=True)
        summary = json.loads((out / "summary.json").read_text())
        results[name] = {
            k: summary[k]
            for k in (
                "accuracy_before",
                "accuracy_after",
                "accuracy_before_interval",
                "accuracy_after_interval",
                "seconds_per_step",
                "wall_minutes",
                "train_reward_per_step",
                "device",
                "demo_args",
            )
        }
        rows = [
            "| variant | prompts × generations, steps | validation before → after (95 % CI of after) | s/step | "
            "wall min |",
            "|---|---|---|---|---|",
        ]
        for key, r in results.items():
            low, high = r["accuracy_after_interval"]
            a = r["demo_args"]
            rows.append(
                f"| {key} | {a['prompts_per_step']} × {a['num_generations']}, {a['max_steps']} | "
                f"{r['accuracy_before']:.3f} → {r['accuracy_after']:.3f} ({low:.2f}–{high:.2f}) | "
                f"{r['seconds_per_step']} | {r['wall_minutes']} |"
            )
        table = "\n".join(rows) + (
            f"\n\n{args.n_validation} validation problems (taken from the training problems, "
            "never trained on), same seed; device: " + r["device"] + ". Seconds per step "
            "were measured while other jobs shared the 2 cores for some variants "
            "(lr1e-4, lr2e-5, lr5e-5, lr2e-5_4x4): compare learning, not speed, across "
            "rows."
        )
        write_results("demo_tuning", {"variants": results}, table)
    return results


if __name__ == "__main__":
    main()
