"""zrl's CPU path against plain TRL on the main job's config: step time and learning after the same steps.

    python -m bench.trl_comparison                 # 20 steps per arm, ~20 min on 2 CPU cores
    python -m bench.trl_comparison --steps 4 --n_eval 50

Both arms train SmolLM2-135M-Instruct on the demo's a + b problems with the same experiment settings (learning rate,
constant schedule, batch shape and completion length — the demo's defaults —, temperature 1, seed, no KL, TRL's
``loss_type="grpo"`` — zrl's ``normalizer="grpo"`` computes the same loss) and differ only where zrl's CPU path
differs from ``GRPOConfig``'s defaults:

==========================  ======================================  =============================================
setting                     plain TRL (GRPOConfig defaults)         zrl CPU path (``zrl_plugins.apps.demo``)
==========================  ======================================  =============================================
gradient checkpointing      on (TRL's default)                      off (a 135M model's activations fit easily)
system prompt               SmolLM2's default (~20 tokens/prompt)   "Answer briefly."
precision                   bf16 autocast (TRL's default bf16=True)  bf16 autocast where the CPU computes bf16
                                                                     natively, fp32 weights (the same here)
LM head for the log-probs   every position, prompt included (TRL     only the completion positions (the same
                            off Triton devices), in fp32             log-probs; zrl_plugins/trainers/fused_head.py)
==========================  ======================================  =============================================

Step time is wall time per optimizer step (generation, scoring, loss, backward, optimizer), median over the steps
after the first. Learning: mean training reward over the last 5 steps, and greedy accuracy on the same held-out
problems after training (each arm prompted as it trained), with 95 % Wilson intervals. The arms run one after the
other in their own processes. Writes ``bench/results/trl_comparison_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def demo_defaults() -> Any:
    """The main job's settings (learning rate, batch shape, completion length): the comparison uses the same."""
    from zrl_plugins.apps.demo import parse_args

    return parse_args([])


def run_arm(arm: str, steps: int, n_eval: int, seed: int, learning_rate: float, out: Path) -> dict[str, Any]:
    """Train one arm in this process; its step times, rewards and held-out accuracy."""
    import os
    import warnings

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
    from zrl_plugins.apps.data import addition_splits
    from zrl_plugins.apps.devices import cpu_supports_bf16
    from zrl_plugins.apps.evaluation import greedy_accuracy
    from zrl_plugins.apps.models import smollm2_path
    from zrl_plugins.apps.provenance import wilson_interval
    from zrl_plugins.framework.plugins import get_plugin_manager

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    demo = demo_defaults()
    system = demo.system_prompt if arm == "zrl" else None  # None: the chat template's default system prompt
    train, held_out = addition_splits(n_eval=n_eval, seed=seed, system=system)
    verifier = get_plugin_manager().load_component("verifier", "last_number")
    common = dict(
        output_dir=str(out),
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        per_device_train_batch_size=demo.prompts_per_step * demo.num_generations,
        num_generations=demo.num_generations,
        max_completion_length=demo.max_completion_length,
        temperature=1.0,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=seed,
        beta=0.0,
    )
    torch.manual_seed(seed)
    if arm == "trl":
        args = GRPOConfig(**common, loss_type="grpo")
        trainer = GRPOTrainer(
            path, reward_funcs=verifier, args=args, train_dataset=Dataset.from_list(train), processing_class=tokenizer
        )
    else:
        args = ZRLConfig(
            **common,
            verifiers=["last_number"],
            normalizer="grpo",
            kl_penalty="none",
            bf16=cpu_supports_bf16(),
            gradient_checkpointing=False,
            model_init_kwargs={"dtype": "float32"},
        )
        trainer = ZRLGRPOTrainer(path, args=args, train_dataset=Dataset.from_list(train), processing_class=tokenizer)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self.began = 0.0

        def on_step_begin(self, *a, **k):
            self.began = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.seconds.append(time.perf_counter() - self.began)

    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_supports_bf16()):
        accuracy, _ = greedy_accuracy(model, tokenizer, held_out, verifier, max_new_tokens=demo.max_completion_length)
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    text = tokenizer.apply_chat_template(train[0]["prompt"], add_generation_prompt=True, tokenize=False)
    prompt_tokens = len(tokenizer(text, add_special_tokens=False).input_ids)
    return {
        "arm": arm,
        "settings": {
            "gradient_checkpointing": args.gradient_checkpointing,
            "bf16": args.bf16,
            "system_prompt": system or "SmolLM2 default",
            "prompt_tokens_example": prompt_tokens,
            "loss_type": args.loss_type,
            "scale_rewards": args.scale_rewards,
        },
        "step_seconds": [round(s, 3) for s in clock.seconds],
        "median_step_seconds": statistics.median(clock.seconds[1:] or clock.seconds),
        "reward_per_step": rewards,
        "reward_last5_mean": statistics.fmean(rewards[-5:]),
        "held_out_accuracy_after": accuracy,
        "held_out_accuracy_after_interval": wilson_interval(accuracy * len(held_out), len(held_out)),
        "held_out_problems": len(held_out),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--n_eval", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning_rate", type=float, default=None, help="default: the demo's")
    parser.add_argument("--arm", choices=["zrl", "trl"], help=argparse.SUPPRESS)  # internal: one arm, JSON to stdout
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.learning_rate = args.learning_rate or demo_defaults().learning_rate
    if args.arm:
        result = run_arm(args.arm, args.steps, args.n_eval, args.seed, args.learning_rate, Path(args.out))
        (Path(args.out) / "arm.json").write_text(json.dumps(result))
        return result

    from bench.common import write_results

    arms = {}
    for arm in ("trl", "zrl"):
        out = Path(tempfile.mkdtemp(prefix=f"trl-comparison-{arm}-"))
        print(f"[trl_comparison] {arm}: {args.steps} steps", flush=True)
        subprocess.run(
            [
                sys.executable,
                "-W",
                "ignore",
                "-m",
                "bench.trl_comparison",
                "--arm",
                arm,
                "--out",
                str(out),
                "--steps",
                str(args.steps),
                "--n_eval",
                str(args.n_eval),
                "--seed",
                str(args.seed),
                "--learning_rate",
                str(args.learning_rate),
            ],
            check=True,
            cwd=ROOT,
        )
        arms[arm] = json.loads((out / "arm.json").read_text())
    trl, zrl = arms["trl"], arms["zrl"]
    speedup = trl["median_step_seconds"] / zrl["median_step_seconds"]
    rows = [
        "| arm | grad. ckpt | system prompt (prompt tokens) | median s/step | reward, last 5 steps | "
        "held-out greedy after (95 % CI) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in (("plain TRL (GRPOConfig defaults)", trl), ("zrl CPU path", zrl)):
        low, high = r["held_out_accuracy_after_interval"]
        s = r["settings"]
        rows.append(
            f"| {name} | {'on' if s['gradient_checkpointing'] else 'off'} | {s['system_prompt']} "
            f"({s['prompt_tokens_example']}) | {r['median_step_seconds']:.1f} | {r['reward_last5_mean']:.3f} | "
            f"{r['held_out_accuracy_after']:.3f} ({low:.2f}–{high:.2f}) |"
        )
    rows += [
        "",
        f"Step-time ratio TRL / zrl: **{speedup:.2f}×**, {args.steps} steps each, SmolLM2-135M-Instruct, "
        f"2 CPU cores, bf16 autocast in both; held-out: {trl['held_out_problems']} a + b problems.",
    ]
    result = {
        "steps": args.steps,
        "seed": args.seed,
        "learning_rate": args.learning_rate,
        "step_time_ratio_trl_over_zrl": speedup,
        "arms": arms,
    }
    write_results("trl_comparison_cpu", result, "\n".join(rows))
    return result


if __name__ == "__main__":
    main()
