"""Helpers shared by the test suites of the core and of the plugins (``from tests.helpers import ...``): the tiny
trainers' settings, the TRL comparison and the two-process launcher. The repository's root ``conftest.py`` holds
the shared tiny-model fixture. They live here, not in ``zrl_plugins``, because no user of the installed package
needs them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def char_count_reward(prompts, completions, **kwargs):
    """A reward with variance on a random model: how many digits the completion writes."""
    return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]


# Settings shared by every tiny-model trainer in the tests (TRL's and zrl's alike).
TINY_TRAINING = dict(
    per_device_train_batch_size=8,
    num_generations=4,
    max_completion_length=8,
    max_steps=2,
    logging_steps=1,
    report_to=[],
    use_cpu=True,
    bf16=False,
    save_strategy="no",
    gradient_checkpointing=False,
    seed=0,
    learning_rate=1e-2,
    temperature=1.0,
)


# The recipe command-line flags of a two-step run on a tiny model (recipes and `zrl train` tests).
TINY_RECIPE_FLAGS = [
    "--max_steps",
    "2",
    "--n_eval",
    "4",
    "--n_train",
    "32",
    "--per_device_train_batch_size",
    "8",
    "--num_generations",
    "4",
    "--max_completion_length",
    "8",
]


def tiny_config(tmp_path, **overrides):
    from zrl_plugins import ZRLConfig

    return ZRLConfig(**{"output_dir": str(tmp_path / "out"), **TINY_TRAINING, **overrides})


def perturbed_batch(batch: dict, seed: int = 7) -> dict:
    """A copy of a generated batch in which importance ratios ≠ 1 (clipping is exercised), the reference differs
    from the policy (KL ≠ 0), and completion lengths differ (sequence-mean and token-mean aggregation disagree)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batch = dict(batch)
    device = batch["completion_mask"].device
    rows, width = batch["completion_mask"].shape
    lengths = torch.arange(rows, device=device) % width + 1
    batch["completion_mask"] = (torch.arange(width, device=device).unsqueeze(0) < lengths.unsqueeze(1)).long()
    batch["num_items_in_batch"] = batch["completion_mask"].sum()
    mask = batch["completion_mask"].float()

    def noise(scale: float, shape: torch.Size) -> torch.Tensor:  # drawn on the CPU: the same numbers on any device
        return (scale * torch.randn(shape, generator=generator)).to(device)

    with torch.no_grad():
        logps = batch.get("ref_per_token_logps")
        if logps is None:
            logps = torch.zeros(rows, width, device=device)
        batch["old_per_token_logps"] = logps + noise(0.3, logps.shape) * mask
        if "ref_per_token_logps" in batch:
            batch["ref_per_token_logps"] = logps + noise(0.5, logps.shape) * mask
    return batch


def loss_and_gradients(trainer, batch: dict):
    """``trainer.compute_loss`` on ``batch`` and the resulting gradients (by parameter name)."""
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def compare_with_trl(trl_trainer, zrl_trainer, inputs: list[dict], seed: int = 123) -> dict:
    """Run the same rollout (same sampling seed) and the same perturbed batch through a TRL ``GRPOTrainer`` and a
    ``ZRLGRPOTrainer``; returns both sides' outputs, losses and gradients for the caller to compare."""
    import torch

    results = {}
    for name, trainer in (("trl", trl_trainer), ("zrl", zrl_trainer)):
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
        torch.manual_seed(seed)
        results[f"{name}_out"] = trainer._generate_and_score_completions([dict(x) for x in inputs])
    batch = perturbed_batch(results["trl_out"])
    for name, trainer in (("trl", trl_trainer), ("zrl", zrl_trainer)):
        results[f"{name}_loss"], results[f"{name}_grads"] = loss_and_gradients(trainer, batch)
    return results


def launch_two_cpu_processes(script: str | Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``script`` under ``accelerate launch`` as 2 CPU processes joined over gloo; returns the CompletedProcess.

    ``--multi_gpu`` selects accelerate's torchrun launcher; the scripts' ``use_cpu=True`` makes the processes join
    over gloo (``--cpu`` with 2 processes silently runs one).
    """
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        str(script),
        *args,
    ]
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def rehash_checkpoint(checkpoint_dir) -> None:
    """Record a checkpoint's files as they are now in its manifest, as if it had been written so (tests that edit a
    checkpoint to stand for one written differently: by an older plugin version, or by someone else)."""
    import json
    from pathlib import Path

    from zrl_plugins.trainers.checkpoint import MANIFEST, file_digest

    path = Path(checkpoint_dir) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["digests"] = {name: file_digest(Path(checkpoint_dir) / name) for name in manifest["files"]}
    path.write_text(json.dumps(manifest))
