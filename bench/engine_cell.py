"""One cell of the engine matrix (``python -m bench.engines``), run under ``accelerate launch``.

    accelerate launch --config_file ENGINE.yaml -m bench.engine_cell --engine zero3 --recipe ppo_max \\
        --phase train --workdir W --model medium --steps 3

``--phase train`` trains ``--steps`` steps of the recipe on a random model with a verifier a random model can earn
(so advantages and gradients are non-zero) and saves a checkpoint at the last step; ``--phase resume`` resumes from
it for one more step. Writes ``W/<phase>.json``: per-step gradient norms and step times, peak GPU memory, and
fingerprints of the policy's and critic's weights when training begins and ends (gathered from the engine's shards),
from which the matrix derives ``params_changed`` and ``resumed``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.engines import RECIPES
from zrl_plugins import hookimpl


class DigitShare:
    """Verifier: the share of digit characters in a completion — a reward a random model earns unevenly, so every
    group has reward variance and every step a non-zero gradient."""

    def __call__(self, prompts, completions, **columns):
        return [sum(ch.isdigit() for ch in str(c)) / max(len(str(c)), 1) for c in completions]


class DigitSharePlugin:
    @hookimpl
    def zrl_register_verifiers(self, register):
        register("digit_share", DigitShare)


def recipe_argv(recipe: str, phase: str, workdir: Path, model: str, steps: int, device: str) -> list[str]:
    _, extra = RECIPES[recipe]
    gpu = device == "cuda"
    argv = [
        "--model_name_or_path",
        model,
        "--verifiers",
        "digit_share",
        "--n_eval",
        "0",
        "--n_train",
        "64",
        "--template",
        "plain",
        "--template_kwargs",
        '{"chat": false}',
        "--per_device_train_batch_size",
        "8",
        "--num_generations",
        "4",
        "--max_completion_length",
        "16",
        "--learning_rate",
        "1e-5",
        "--lr_scheduler_type",
        "constant",
        "--logging_steps",
        "1",
        "--save_strategy",
        "steps",
        "--save_steps",
        str(steps),
        "--save_only_model",
        "false",
        "--report_to",
        "none",
        "--seed",
        "0",
        "--gradient_checkpointing",
        "false",
        "--disable_tqdm",
        "true",
        "--output_dir",
        str(workdir / "run"),
        "--use_cpu",
        "false",
        "--dtype",
        "auto",
        "--bf16",
        "true" if gpu else "false",
        "--attn_implementation",
        "sdpa",
        *extra,
    ]
    if phase == "train":
        return [*argv, "--max_steps", str(steps)]
    return [
        *argv,
        "--max_steps",
        str(steps + 1),
        "--resume_from_checkpoint",
        str(workdir / "run" / f"checkpoint-{steps}"),
    ]


def fingerprint(trainer: Any) -> dict[str, list[float]]:
    """Per parameter (sum, sum of squares) in float64 of the full weights, gathered from any engine (a collective:
    every process calls it; rank 0's result is the meaningful one)."""
    import torch

    model = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
    state = trainer.accelerator.get_state_dict(model)
    return {
        k: [float(v.double().sum()), float(v.double().pow(2).sum())]
        for k, v in (state or {}).items()
        if torch.is_tensor(v) and v.is_floating_point()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", required=True, choices=["ddp", "fsdp2", "zero2", "zero3"])
    parser.add_argument("--recipe", required=True, choices=sorted(RECIPES))
    parser.add_argument("--phase", required=True, choices=["train", "resume"])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--model", default="medium")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.engine == "fsdp2" and device == "cpu":
        from zrl_plugins.apps.devices import force_fsdp_on_cpu

        force_fsdp_on_cpu()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers import TrainerCallback

    from zrl_plugins.apps.distributed import shutdown_distributed
    from zrl_plugins.apps.model_loading import parameter_counts
    from zrl_plugins.apps.recipe import prepare
    from zrl_plugins.trainers.critic import is_critic_key

    workdir = Path(args.workdir)
    method, _ = RECIPES[args.recipe]
    cell_argv = recipe_argv(args.recipe, args.phase, workdir, args.model, args.steps, device)
    if device == "cpu" and args.engine in ("ddp", "fsdp2"):
        cell_argv = [a if a != "false" or cell_argv[i - 1] != "--use_cpu" else "true" for i, a in enumerate(cell_argv)]
    prepared = prepare(method, cell_argv, model_workdir=str(workdir.parent / "models"), plugins=[DigitSharePlugin()])
    trainer = prepared.trainer()
    prints: dict[str, Any] = {}

    class Fingerprints(TrainerCallback):
        def on_train_begin(self, a, state, control, **kwargs):
            prints["begin"], prints["step_begin"] = fingerprint(trainer), state.global_step

        def on_train_end(self, a, state, control, **kwargs):
            prints["end"], prints["step_end"] = fingerprint(trainer), state.global_step

    trainer.add_callback(Fingerprints())
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.time()
    trainer.train(resume_from_checkpoint=prepared.config.resume_from_checkpoint)
    begin = prints.get("step_begin", 0)  # a resumed run's history starts with the checkpoint's steps
    history = [h for h in trainer.state.log_history if "loss" in h and h.get("step", 0) > begin]
    result = {
        "engine": args.engine,
        "recipe": args.recipe,
        "phase": args.phase,
        "device": device,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "num_processes": trainer.accelerator.num_processes,
        "steps": [h["step"] for h in history],
        "grad_norm": [h.get("grad_norm") for h in history],
        "critic_grad_norm": [h.get("critic/grad_norm") for h in history],
        "loss": [h.get("loss") for h in history],
        "step_time": [h.get("step_time") for h in history],
        "reward_std": [h.get("reward_std") for h in history],
        "seconds": round(time.time() - started, 1),
        "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
        "step_begin": prints.get("step_begin"),
        "step_end": prints.get("step_end"),
        **parameter_counts(trainer.model, exclude=is_critic_key),
    }
    if trainer.accelerator.is_main_process:
        for when in ("begin", "end"):
            state = prints.get(when, {})
            result[f"policy_{when}"] = {k: v for k, v in state.items() if not is_critic_key(k)}
            result[f"critic_{when}"] = {k: v for k, v in state.items() if is_critic_key(k)}
        (workdir / f"{args.phase}.json").write_text(json.dumps(result))
    shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
