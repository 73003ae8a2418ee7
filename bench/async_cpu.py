"""Asynchronous rollouts (a ``vllm serve`` process generating ahead) against the synchronous colocated run, on
SmolLM2-135M with vLLM's CPU build, same settings, same run.

    bash scripts/setup_vllm.sh && .venv-vllm/bin/python -m bench.async_cpu             # everything
    .venv-vllm/bin/python -m bench.async_cpu --parts throughput,mismatch --steps 8     # no demo arms

Arms, each in a process of its own, one after the other:

1. **Throughput.** The demo's GRPO settings with 64-token completions (4 prompts x 4 completions, lr 2e-5, bf16
   autocast, fp32 weights), ``--steps`` optimizer steps: (a) vLLM colocated in the trainer, both cores for both;
   (b) ``async_rollouts`` with ``max_staleness`` 1: the server's processes on core 0 (``vllm_server_cpus``), the
   trainer on core 1 (``sched_setaffinity``, one torch thread). EOS is ignored, so every completion has 64 tokens
   and both arms train on the same tokens per step whatever their trajectories do to lengths. Samples/s and
   tokens/s over the steps after the first, median step time, the staleness of each batch, the trainer's wait.
2. **Mismatch.** ``async_rollouts`` with ``max_staleness`` 1, 2 and 4: the (π_old, behaviour, mask) tensors of
   every step are kept, and no correction (``none``), ``token_tis`` (truncated IS, TRL's ``token_truncate``) and
   ``icepop`` are applied to the same tensors: token KL(behaviour ‖ π_old), ESS/N, masked fraction, weight range.
3. **Accuracy** (``--parts demo``): the demo (``python -m zrl_plugins.demo``, 45 steps, the same number of samples)
   with vLLM colocated and with ``--async_rollouts``: held-out greedy accuracy before and after, 95 % Wilson
   intervals, one seed each.

Writes ``bench/results/async_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.vllm_cpu import NEW_TOKENS, mismatch

ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = ROOT / "bench" / "results" / "async_cpu.json"


def arm_train(mode: str, steps: int, max_staleness: int, capture: str | None, fixed_length: bool) -> dict[str, Any]:
    """``mode``: ``colocate`` (synchronous, both cores) or ``async`` (server on core 0, trainer on core 1)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from bench.common import StepTimer
    from bench.vllm_cpu import capture_mismatch, demo_rows, grpo_config
    from zrl_plugins import ZRLGRPOTrainer
    from zrl_plugins.apps.models import smollm2_path

    if mode == "async":
        os.sched_setaffinity(0, {1})
        torch.set_num_threads(1)
    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    config = grpo_config(
        steps,
        use_vllm=True,
        vllm_mode="server" if mode == "async" else "colocate",
        async_rollouts=mode == "async",
        max_staleness=max_staleness,
        vllm_server_cpus="0",
        # every completion 64 tokens: both arms train on the same number of tokens per step, whatever their
        # trajectories do to the lengths (the mismatch arms sample until EOS, as training does)
        generation_kwargs={"ignore_eos": True} if fixed_length else None,
    )
    trainer = ZRLGRPOTrainer(
        path, args=config, train_dataset=Dataset.from_list(demo_rows()).shuffle(seed=0), processing_class=tokenizer
    )
    timer = StepTimer()
    trainer.add_callback(timer)
    # π_old is recomputed for every batch (the decoupled objective; the default correction needs it)
    captured = capture_mismatch(trainer) if capture else []
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    if capture:
        torch.save(captured, capture)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    samples = config.per_device_train_batch_size
    tokens = [h["completions/mean_length"] * samples for h in logs]  # completion tokens of each step
    later = timer.times[1:] or timer.times
    return {
        "arm": "async (server core 0, trainer core 1)" if mode == "async" else "vLLM colocate (both cores)",
        "max_staleness": max_staleness if mode == "async" else None,
        "steps": len(logs),
        "wall_s": wall,
        "median_step_s": statistics.median(later),
        "samples_per_s": samples * len(later) / sum(later),
        "tokens_per_s": sum(tokens[1:] or tokens) / sum(later),
        "staleness": [h.get("async/staleness_max", 0.0) for h in logs],
        "wait_s": [h.get("async/wait_s", 0.0) for h in logs],
        "rewards": [h["reward"] for h in logs],
    }


def arm_demo(async_rollouts: bool, out: Path, seed: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "zrl_plugins.demo", "--output_dir", str(out), "--use_vllm", "--seed", str(seed)]
    env = dict(os.environ)
    if async_rollouts:  # the server on core 0, the trainer on core 1 (one thread), as in the throughput arm
        command = [
            "taskset",
            "-c",
            "1",
            *command,
            "--async_rollouts",
            "--max_staleness",
            "1",
            "--vllm_server_cpus",
            "0",
        ]
        env["OMP_NUM_THREADS"] = "1"
    start = time.time()
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    summary = json.loads((out / "summary.json").read_text())
    return {
        "arm": "demo --async_rollouts (max_staleness 1)" if async_rollouts else "demo --use_vllm (colocate)",
        "before": summary["accuracy_before"],
        "after": summary["accuracy_after"],
        "after_interval": summary["accuracy_after_interval"],
        "seed": seed,
        "train_reward_per_step": summary["train_reward_per_step"],
        "minutes": (time.time() - start) / 60,
    }


def _in_process(arm: str, *args: str) -> Any:
    out = Path(tempfile.mkdtemp()) / "arm.json"
    subprocess.run([sys.executable, "-m", "bench.async_cpu", "--arm", arm, "--out", str(out), *args], check=True)
    return json.loads(out.read_text())


def table(results: dict[str, Any]) -> str:
    lines = ["# Asynchronous rollouts on vLLM's CPU build (SmolLM2-135M, 2 CPU cores)", ""]
    if results.get("throughput"):
        lines += [
            f"## Throughput: {results['steps']} GRPO steps, 16 samples x {NEW_TOKENS} tokens (EOS ignored), same run",
            "",
            "| arm | samples/s | tokens/s | median step (s) | staleness per step | trainer's wait for data (s) |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["throughput"]:
            staleness = ",".join(f"{s:g}" for s in r["staleness"])
            wait = statistics.median(r["wait_s"][1:] or r["wait_s"])
            lines.append(
                f"| {r['arm']} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.1f} | {r['median_step_s']:.2f} | "
                f"{staleness} | {wait:.2f} |"
            )
        base, other = results["throughput"]
        lines += ["", f"Async / colocate samples/s: **{other['samples_per_s'] / base['samples_per_s']:.2f}x**.", ""]
    if results.get("mismatch"):
        lines += [
            "## Mismatch between the server's sampler and π_old (recomputed), by staleness and correction",
            "",
            "| max_staleness | correction | token KL(behaviour ‖ π_old) | ESS/N | masked fraction | weight min | "
            "weight max |",
            "|---|---|---|---|---|---|---|",
        ]
        for staleness, rows in results["mismatch"].items():
            for r in rows:
                lines.append(
                    f"| {staleness} | {r['correction']} | {r['behaviour_kl']:.4f} | {r['ess']:.3f} | "
                    f"{r['masked_fraction']:.3f} | {r['weight_min']:.3f} | {r['weight_max']:.3f} |"
                )
        lines.append("")
    if results.get("demo"):
        lines += [
            "## The demo: held-out greedy accuracy at an equal number of samples (45 steps, 200 problems)",
            "",
            "| arm | seed | before | after (95 % interval) | training reward, last 10 steps | minutes |",
            "|---|---|---|---|---|---|",
        ]
        for r in sorted(results["demo"], key=lambda r: (r.get("seed", 0), r["arm"])):
            interval = r["after_interval"]
            shown = f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else ""
            late = statistics.mean(r["train_reward_per_step"][-10:]) if r.get("train_reward_per_step") else float("nan")
            lines.append(
                f"| {r['arm']} | {r.get('seed', 0)} | {r['before']:.3f} | {r['after']:.3f}{shown} | {late:.3f} | "
                f"{r['minutes']:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--parts", default="throughput,mismatch,demo")
    parser.add_argument("--demo_seed", type=int, default=0, help="the seed of the demo arms (--parts demo)")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--max_staleness", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--capture", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fixed_length", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    if args.arm:
        result = arm_train(args.arm, args.steps, args.max_staleness, args.capture, args.fixed_length)
        Path(args.out).write_text(json.dumps(result))
        return
    from bench.common import write_results

    parts = set(args.parts.split(","))
    previous = json.loads(RESULTS_FILE.read_text()) if RESULTS_FILE.exists() else {}
    results: dict[str, Any] = {k: previous.get(k) for k in ("throughput", "mismatch", "demo", "steps")}
    work = Path(tempfile.mkdtemp())
    if "throughput" in parts:
        steps = str(args.steps)
        results["steps"] = args.steps
        fixed = ["--steps", steps, "--fixed_length"]
        results["throughput"] = [_in_process("colocate", *fixed), _in_process("async", *fixed)]
    if "mismatch" in parts:
        results["mismatch"] = {}
        for staleness in (1, 2, 4):
            capture = str(work / f"captured_{staleness}.pt")
            _in_process("async", "--steps", "8", "--max_staleness", str(staleness), "--capture", capture)
            # the first batch is on-policy in every arm
            results["mismatch"][str(staleness)] = mismatch(capture, ["none", "token_tis", "icepop"], skip=1)
    if "demo" in parts:  # one seed a call; the arms of other seeds already measured are kept
        kept = [r for r in results.get("demo") or [] if r.get("seed", 0) != args.demo_seed]
        new = [arm_demo(False, work / "demo", args.demo_seed), arm_demo(True, work / "demo_async", args.demo_seed)]
        results["demo"] = kept + new
    write_results("async_cpu", results, table(results))


if __name__ == "__main__":
    main()
