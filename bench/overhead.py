"""Plugin overhead: zrl GRPO step time / plain TRL GRPO step time, same config, measured side by side in one run.

Both trainers are built from the same model and data with equivalent settings (TRL: loss_type="grpo",
scale_rewards="group", beta; zrl: normalizer="grpo", kl_penalty="k3", same beta). They train in alternating rounds
(TRL, zrl, TRL', zrl, TRL, ...) so drift of the machine hits all; the first step of every round is dropped
(optimizer and cache warm-up) and the median over the remaining steps is compared. TRL' is a second, identical TRL
trainer: TRL'/TRL is the noise floor of the measurement (an A/A control). With --fixed_length every completion is
generated to max_completion_length (min_new_tokens), so step times compare the trainers, not sampling luck.

    python -m bench.overhead --model tiny              # ~1 min on 2 CPU cores
    python -m bench.overhead --model smollm2           # SmolLM2-135M, a few minutes
    python -m bench.overhead --model medium --device cuda  # a random 12-layer Llama (~180M) on a GPU, bf16
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


SHAPES = {
    "tiny": dict(per_device_train_batch_size=8, num_generations=4, max_completion_length=16),
    "smollm2": dict(per_device_train_batch_size=8, num_generations=4, max_completion_length=16),
    "medium": dict(per_device_train_batch_size=32, num_generations=8, max_completion_length=64),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2", "medium"], default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--fixed_length", action="store_true", help="generate every completion to full length")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps_per_round", type=int, default=8)
    args = parser.parse_args()

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from bench.common import StepTimer, median, write_results
    from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
    from zrl_plugins.apps.data import addition_splits
    from zrl_plugins.apps.models import resolve_model

    workdir = tempfile.mkdtemp(prefix="zrl-bench-")
    model_path, shape = resolve_model(args.model, workdir), SHAPES[args.model]
    train_rows, _ = addition_splits(n_eval=10, chat=args.model == "smollm2")
    dataset = Dataset.from_list(train_rows)

    def reward(prompts, completions, **kwargs):  # identical for both: a cheap reward with variance
        return [float(sum(ch.isdigit() for ch in str(c))) for c in completions]

    common = dict(
        **shape,
        learning_rate=1e-6,
        beta=0.04,
        logging_steps=1,
        report_to=[],
        use_cpu=args.device == "cpu",
        bf16=args.device == "cuda",
        generation_kwargs={"min_new_tokens": shape["max_completion_length"]} if args.fixed_length else None,
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
        disable_tqdm=True,
        max_steps=args.steps_per_round,
    )
    trl_args = GRPOConfig(output_dir=os.path.join(workdir, "trl"), loss_type="grpo", scale_rewards="group", **common)
    zrl_args = ZRLConfig(output_dir=os.path.join(workdir, "zrl"), normalizer="grpo", kl_penalty="k3", **common)
    trainers = {
        "trl": GRPOTrainer(model_path, reward, args=trl_args, train_dataset=dataset),
        "zrl": ZRLGRPOTrainer(model_path, reward, args=zrl_args, train_dataset=dataset),
        "trl_control": GRPOTrainer(model_path, reward, args=trl_args, train_dataset=dataset),
    }
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for round_index in range(args.rounds):
        order = list(trainers) if round_index % 2 == 0 else list(reversed(trainers))
        for name in order:
            timer = StepTimer()
            trainers[name].add_callback(timer)
            trainers[name].train()
            trainers[name].remove_callback(timer)
            times[name] += timer.times[1:]
        print(f"round {round_index + 1}/{args.rounds}: trl {median(times['trl']):.4f}s zrl {median(times['zrl']):.4f}s")

    ratio = median(times["zrl"]) / median(times["trl"])
    control = median(times["trl_control"]) / median(times["trl"])
    payload = {
        "benchmark": "plugin overhead: zrl GRPO step time / plain TRL GRPO step time",
        "model": args.model,
        "device": args.device,
        "fixed_length": args.fixed_length,
        "config": {k: v for k, v in shape.items()},
        "steps_measured_each": len(times["trl"]),
        "ratio_median_step_time": ratio,
        "control_ratio_trl_vs_trl": control,
        "median_step_s": {k: median(v) for k, v in times.items()},
        "step_times_s": times,
    }
    table = (
        "| model | steps each | zrl / TRL median step time | A/A control: TRL' / TRL |\n|---|---|---|---|\n"
        f"| {args.model} ({args.device}) | {len(times['trl'])} | {ratio:.3f} | {control:.3f} |"
    )
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    write_results(f"overhead_{args.model}{suffix}", payload, table)


if __name__ == "__main__":
    main()
