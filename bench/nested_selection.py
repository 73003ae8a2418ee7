"""Which layers should ``nested`` skip? Each selection policy × skip budget, against the full model, on SmolLM2.

    python -m bench.nested_selection                     # ~40 min on 2 CPU cores
    python -m bench.nested_selection --steps 6 --seeds 0,1 --budgets 1,2

For s ∈ {1/30, 2/30, 4/30} (1, 2, 4 of SmolLM2's 30 layers) and selection ∈ {random, block, calibrated}:
(1) generation tokens/s of the behaviour model against the full model (same prompts, same length, rounds alternate
the order), and the greedy accuracy of the behaviour model alone on held-out a + b problems; (2) training reward over
``--steps`` steps of the nested_reft cpu-demo recipe, against the default rollout trained with several seeds — the
seed-to-seed spread of the default is the yardstick. Reports the largest s whose mean training reward over the run
stays within the default's spread (min..max over seeds). Writes ``bench/results/nested_selection_<model>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("random", "block", "calibrated")


def recipe_run(out: Path, rollout: str, rollout_kwargs: dict | None, seed: int, steps: int) -> dict[str, Any]:
    """One nested_reft cpu-demo run (no held-out evaluation) in its own process; its summary.json."""
    command = [
        sys.executable,
        str(ROOT / "recipes" / "nested_reft.py"),
        "--preset",
        "cpu-demo",
        "--max_steps",
        str(steps),
        "--n_eval",
        "0",
        "--seed",
        str(seed),
        "--split_seed",
        "0",
        "--output_dir",
        str(out),
        "--rollout",
        rollout,
        "--bf16",
        "true",
        "--rollout_kwargs",
        json.dumps(rollout_kwargs or {}),
    ]  # the preset's are nested's
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def rewards_of(summary: dict[str, Any]) -> list[float]:
    return [h["reward"] for h in summary["log_history"] if "reward" in h and "loss" in h]


def speed_and_accuracy(budgets: list[int], rounds: int) -> dict[str, Any]:
    """Generation speed of each policy's skip set against the full model, and its greedy held-out accuracy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from zrl_rollouts.nested import NestedRollout, skipped_layers

    from zrl_plugins.apps.data import addition_splits
    from zrl_plugins.apps.evaluation import greedy_accuracy
    from zrl_plugins.apps.models import smollm2_path
    from zrl_plugins.framework.plugins import get_plugin_manager

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    layers = model.config.num_hidden_layers
    _, held_out = addition_splits(n_eval=100, seed=0, system="Answer briefly.")
    verifier = get_plugin_manager().load_component("verifier", "last_number")
    prompts = [
        tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in held_out[:16]
    ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)

    class Calibrator:  # what NestedRollout.calibrate needs of a trainer, on one process
        accelerator = type("A", (), {"device": torch.device("cpu"), "reduce": staticmethod(lambda t, **k: t)})()
        _tokenizer = tokenizer

        def _tokenize_prompts(self, rows):
            return [tokenizer(p, add_special_tokens=False).input_ids for p in rows], None, None

    sets: dict[str, list[int]] = {"full": []}
    for count in budgets:
        for policy in POLICIES:
            strategy = NestedRollout(skip_ratio=count / layers, selection=policy)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                sets[f"{policy}/{count}"] = strategy.choose(model, prompts, Calibrator())
    times: dict[str, list[float]] = {k: [] for k in sets}

    def generate(skip: list[int]) -> float:
        with skipped_layers(model, skip), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            start = time.perf_counter()
            model.generate(
                **batch, do_sample=True, max_new_tokens=24, min_new_tokens=24, pad_token_id=tokenizer.pad_token_id
            )
            return time.perf_counter() - start

    generate([])
    for r in range(rounds):
        order = list(sets)
        random.Random(r).shuffle(order)
        for key in order:
            times[key].append(generate(sets[key]))
    results = {}
    for key, skip in sets.items():
        with skipped_layers(model, skip), torch.autocast("cpu", dtype=torch.bfloat16):
            accuracy, _ = greedy_accuracy(model, tokenizer, held_out, verifier, max_new_tokens=16)
        results[key] = {
            "layers": skip,
            "speedup": statistics.median(times["full"]) / statistics.median(times[key]),
            "greedy_accuracy": accuracy,
        }
    return {"num_layers": layers, "sets": results}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the default rollout (its spread)")
    parser.add_argument("--budgets", default="1,2,4", help="layers skipped (of 30)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    from bench.common import write_results

    measured = speed_and_accuracy(budgets, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="nested-selection-"))
    default = {
        seed: rewards_of(recipe_run(work / f"default-{seed}", "default", None, seed, args.steps)) for seed in seeds
    }
    means = [statistics.mean(r) for r in default.values()]
    spread = (min(means), max(means))
    training: dict[str, Any] = {}
    for count in budgets:
        for policy in POLICIES:
            kwargs = {"skip_ratio": count / measured["num_layers"], "selection": policy}
            rewards = rewards_of(recipe_run(work / f"{policy}-{count}", "nested", kwargs, seeds[0], args.steps))
            mean = statistics.mean(rewards)
            within = mean >= spread[0]  # at least the weakest default seed
            training[f"{policy}/{count}"] = {"rewards": rewards, "mean_reward": mean, "within_default_spread": within}
    best = {p: max([c for c in budgets if training[f"{p}/{c}"]["within_default_spread"]], default=0) for p in POLICIES}
    lines = [
        "| selection | layers skipped | which | tokens/s vs full | greedy acc. (behaviour model) | "
        "mean training reward | within default's spread |",
        "|---|---|---|---|---|---|---|",
    ]
    full = measured["sets"]["full"]
    lines.append(
        f"| full model | 0 | – | 1.00 | {full['greedy_accuracy']:.2f} | "
        f"{statistics.mean(means):.3f} (seeds {seeds}: {spread[0]:.3f}–{spread[1]:.3f}) | – |"
    )
    for count in budgets:
        for policy in POLICIES:
            key = f"{policy}/{count}"
            m, t = measured["sets"][key], training[key]
            lines.append(
                f"| {policy} | {count}/{measured['num_layers']} | {m['layers']} | {m['speedup']:.2f} | "
                f"{m['greedy_accuracy']:.2f} | {t['mean_reward']:.3f} | "
                f"{'yes' if t['within_default_spread'] else 'no'} |"
            )
    verdict = "; ".join(f"{p}: {best[p]}/{measured['num_layers']}" for p in POLICIES)
    lines += [
        "",
        f"SmolLM2-135M, a + b, {args.steps} steps of the nested_reft cpu-demo recipe (bf16 autocast); the "
        f"default rollout's mean training reward over {len(seeds)} seeds is the yardstick (a nested run counts "
        f"as within it when its mean reward is at least the lowest seed's). Largest budget within: "
        f"{verdict}.",
    ]
    payload = {
        "steps": args.steps,
        "seeds": seeds,
        "default_rewards": default,
        "default_spread": spread,
        "speed_and_accuracy": measured,
        "training": training,
        "largest_budget_within_spread": best,
    }
    write_results("nested_selection_smollm2", payload, "\n".join(lines))
    return payload


if __name__ == "__main__":
    main()
