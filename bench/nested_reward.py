"""Training reward of ``default`` vs ``nested`` with each correction, same seed, data and number of steps.

python -m bench.nested_reward [--steps 6]     # SmolLM2-135M on the CPU, a + b, ~3 min per variant
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

VARIANTS = {  # name: (rollout, rollout_correction)
    "default": ("default", None),
    "nested+none": ("nested", "none"),
    "nested+token_tis": ("nested", "token_tis"),
    "nested+seq_tis": ("nested", "seq_tis"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--skip_ratio", type=float, default=0.25)
    args = parser.parse_args()

    from datasets import Dataset

    from bench.common import write_results
    from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
    from zrl_plugins.apps.data import addition_splits
    from zrl_plugins.apps.models import smollm2_path

    model = smollm2_path()
    train, _ = addition_splits(n_eval=50)
    results = {}
    for name, (rollout, correction) in VARIANTS.items():
        kwargs = {"skip_ratio": args.skip_ratio} if rollout == "nested" else {}
        config = ZRLConfig(
            output_dir=tempfile.mkdtemp(),
            verifiers=["last_number"],
            kl_penalty="none",
            learning_rate=2e-5,
            lr_scheduler_type="constant",
            per_device_train_batch_size=32,
            num_generations=8,
            max_completion_length=24,
            max_steps=args.steps,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            seed=0,
            disable_tqdm=True,
            rollout=rollout,
            rollout_kwargs=kwargs,
            rollout_correction=correction,
        )
        trainer = ZRLGRPOTrainer(model, args=config, train_dataset=Dataset.from_list(train))
        trainer.train()
        logs = [h for h in trainer.state.log_history if "reward" in h]
        rewards = [h["reward"] for h in logs]
        results[name] = {
            "reward_per_step": rewards,
            "mean_reward": sum(rewards) / len(rewards),
            "mean_reward_last_3": sum(rewards[-3:]) / len(rewards[-3:]),
            "is_weight_mean": [h.get("rollout/is_weight_mean") for h in logs],
            "is_truncated_fraction": [h.get("rollout/is_truncated_fraction") for h in logs],
        }
        print(name, results[name]["mean_reward"], results[name]["mean_reward_last_3"], flush=True)
    table = "| variant | mean reward | mean reward, last 3 steps |\n|---|---|---|\n" + "\n".join(
        f"| {k} | {v['mean_reward']:.3f} | {v['mean_reward_last_3']:.3f} |" for k, v in results.items()
    )
    payload = {
        "benchmark": "training reward, default vs nested variants",
        "steps": args.steps,
        "skip_ratio": args.skip_ratio,
        "model": "smollm2",
        "results": results,
    }
    write_results("nested_reward_smollm2", payload, table)


if __name__ == "__main__":
    main()
