"""Does the PPO critic learn on SmolLM2 a + b? Critic settings of the ppo_max cpu-demo recipe, 30 steps each.

    python -m bench.ppo_critic                          # every configuration below, one after another
    python -m bench.ppo_critic --only current,lr2e-4 --steps 30

Each configuration is one ``recipes/ppo_max.py --preset cpu-demo`` run in its own process (bf16 autocast, no held-out
evaluation), differing only in the critic options listed. Per step it records the critic's explained variance —
1 − Var(R − V) / Var(R) over the completion tokens of the new batch, with V the values *before* the critic trains on
that batch, so it measures prediction, not fit — and the training reward. Reported: the mean explained variance over
the last 5 steps (``explained_variance_last5_mean``; the target is ≥ 0.3) and the mean reward over the first and the
last 5 steps (the critic must not cost the reward gain). Results of earlier invocations are kept, so configurations
can be added one at a time. Writes ``bench/results/ppo_critic_<device>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# name -> (what it changes, recipe flags)
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "current": ("the preset: critic lr 5e-5, reward scaling r/σ, λ 0.95, no warm-up", []),
    "lr2e-4": ("critic lr 2e-4", ["--critic_learning_rate", "2e-4"]),
    "lr2e-4_mean_std": (
        "critic lr 2e-4, reward scaling (r − μ)/σ",
        ["--critic_learning_rate", "2e-4", "--reward_scaling", "mean_std"],
    ),
    "lr2e-4_mean_std_warmup5": (
        "critic lr 2e-4, (r − μ)/σ, 5 critic-only warm-up steps",
        ["--critic_learning_rate", "2e-4", "--reward_scaling", "mean_std", "--critic_warmup_steps", "5"],
    ),
    "lr2e-4_mean_std_lam1": (
        "critic lr 2e-4, (r − μ)/σ, GAE λ = 1 (Monte-Carlo returns)",
        [
            "--critic_learning_rate",
            "2e-4",
            "--reward_scaling",
            "mean_std",
            "--advantage_estimator_kwargs",
            '{"gamma": 1.0, "lam": 1.0}',
        ],
    ),
    "lr2e-4_mean_std_lam1_warmup5": (
        "critic lr 2e-4, (r − μ)/σ, λ = 1, 5 critic-only warm-up steps",
        [
            "--critic_learning_rate",
            "2e-4",
            "--reward_scaling",
            "mean_std",
            "--critic_warmup_steps",
            "5",
            "--advantage_estimator_kwargs",
            '{"gamma": 1.0, "lam": 1.0}',
        ],
    ),
    "lr5e-4_mean_std": (
        "critic lr 5e-4, (r − μ)/σ",
        ["--critic_learning_rate", "5e-4", "--reward_scaling", "mean_std"],
    ),
    "shared_lr1e-3": (
        "value head on the policy's backbone (critic_mode shared), head lr 1e-3, (r − μ)/σ",
        ["--critic_mode", "shared", "--critic_learning_rate", "1e-3", "--reward_scaling", "mean_std"],
    ),
}


def run(name: str, steps: int, seed: int) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix=f"ppo-critic-{name}-"))
    command = [
        sys.executable,
        "-W",
        "ignore",
        str(ROOT / "recipes" / "ppo_max.py"),
        "--preset",
        "cpu-demo",
        "--max_steps",
        str(steps),
        "--n_eval",
        "0",
        "--bf16",
        "true",
        "--seed",
        str(seed),
        "--output_dir",
        str(out),
        *CONFIGS[name][1],
    ]
    print(f"[ppo_critic] {name}: {' '.join(command[3:])}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    summary = json.loads((out / "summary.json").read_text())
    steps_logged = [h for h in summary["log_history"] if "reward" in h and "loss" in h]
    ev = [h.get("critic/explained_variance") for h in steps_logged]
    rewards = [h["reward"] for h in steps_logged]
    last5 = [e for e in ev[-5:] if e is not None]
    return {
        "change": CONFIGS[name][0],
        "flags": CONFIGS[name][1],
        "explained_variance_per_step": ev,
        "explained_variance_last5_mean": statistics.fmean(last5) if last5 else None,
        "reward_per_step": rewards,
        "reward_first5_mean": statistics.fmean(rewards[:5]),
        "reward_last5_mean": statistics.fmean(rewards[-5:]),
        "value_loss_per_step": [h.get("critic/value_loss") for h in steps_logged],
        "seconds": summary.get("seconds"),
        "device": summary.get("device"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated configuration names")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="names the results file (the recipe picks the device)")
    args = parser.parse_args(argv)
    from bench.common import RESULTS, write_results

    name = f"ppo_critic_{args.device}"
    previous = RESULTS / f"{name}.json"
    results = json.loads(previous.read_text()).get("configs", {}) if previous.exists() else {}
    for config in args.only.split(",") if args.only else list(CONFIGS):
        results[config] = run(config, args.steps, args.seed)
        rows = [
            "| configuration | critic explained variance, last 5 steps | reward, first 5 → last 5 steps |",
            "|---|---|---|",
        ]
        for key, r in results.items():
            ev = r["explained_variance_last5_mean"]
            rows.append(
                f"| `{key}`: {r['change']} | {'–' if ev is None else f'{ev:.3f}'} | "
                f"{r['reward_first5_mean']:.3f} → {r['reward_last5_mean']:.3f} |"
            )
        rows += [
            "",
            f"ppo_max cpu-demo preset (SmolLM2-135M, a + b, 4 prompts × 8, k1 KL in the reward), "
            f"{args.steps} steps, seed {args.seed}, bf16 autocast; target: explained variance ≥ 0.3 over the "
            "last 5 steps.",
        ]
        write_results(name, {"steps": args.steps, "seed": args.seed, "configs": results}, "\n".join(rows))
    return results


if __name__ == "__main__":
    main()
