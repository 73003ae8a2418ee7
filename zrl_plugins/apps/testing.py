"""Offline fixtures for tests and benchmarks: a tiny random Llama and a byte-level BPE tokenizer trained locally.

Nothing is downloaded: the tokenizer is trained with the ``tokenizers`` library on generated text.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

TINY_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = [
        "what",
        "is",
        "the",
        "answer",
        "sum",
        "of",
        "plus",
        "minus",
        "times",
        "equals",
        "so",
        "we",
        "get",
        "therefore",
        "result",
        "number",
        "question",
    ]
    lines = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"What is {a} + {b}? Answer: {a + b}. " + " ".join(rng.choices(words, k=6)))
    return lines


def build_tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ``<pad>``, ``<s>``, ``</s>``, left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left"
    )
    return fast


def build_tiny_model(
    path: str | os.PathLike[str],
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    intermediate_size: int | None = None,
    tie_word_embeddings: bool = False,
) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` and its tokenizer to ``path``; returns the path."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------------ TRL comparison
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
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port), str(script), *args,
    ]  # fmt: skip
    root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def force_fsdp_on_cpu() -> None:
    """Make accelerate run FSDP on CPU processes (gloo) instead of silently falling back to DDP.

    Accelerate only turns ``ACCELERATE_USE_FSDP`` into an FSDP run on accelerator devices. FSDP2 itself works on CPU
    tensors, so CPU tests and the engine matrix's CPU mode flip the distributed type after accelerate has set up a
    multi-process CPU run. Call it first thing in a process launched with ``--multi_gpu`` and ``use_cpu``; the FSDP
    options come from the usual ``FSDP_*`` environment variables (see :data:`FSDP2_CPU_ENV`).
    """
    from accelerate import state
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    original = state.AcceleratorState.__init__
    if getattr(original, "_zrl_fsdp_on_cpu", False):
        return

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU:
            os.environ["ACCELERATE_USE_FSDP"] = "true"
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin or FullyShardedDataParallelPlugin()

    init._zrl_fsdp_on_cpu = True
    state.AcceleratorState.__init__ = init


# The environment accelerate's FSDP plugin reads: FSDP2, transformer-layer auto-wrap, sharded checkpoints.
FSDP2_CPU_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
}
