"""Launched by tests/test_numerics.py with 2 CPU processes: a NaN in rank 0's training forward of step 2 only. Both
processes must skip that optimizer step together and stay identical and finite."""

import json
import os
import sys

import torch
from datasets import Dataset

from tests.helpers import TINY_TRAINING
from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
from zrl_plugins.apps.distributed import shutdown_distributed

model_path, out_dir = sys.argv[1], sys.argv[2]
rank = int(os.environ.get("RANK", "0"))


def reward(prompts, completions, **kwargs):
    return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]


ds = Dataset.from_list([{"prompt": f"What is {a} + 1?", "answer": str(a + 1)} for a in range(8)])
args = ZRLConfig(
    **{**TINY_TRAINING, "per_device_train_batch_size": 4, "max_completion_length": 6, "max_steps": 3},
    output_dir=f"{out_dir}/run",
    kl_penalty="none",
    beta=0.0,
    gradient_accumulation_steps=2,
)
trainer = ZRLGRPOTrainer(model_path, reward, args=args, train_dataset=ds)


def poison(module, inputs, output):
    if rank == 0 and torch.is_grad_enabled() and trainer.state.global_step == 1:  # step 2's training forward only
        return output * float("nan")
    return output


trainer.model.model.layers[0].register_forward_hook(poison)
trainer.train()
params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
skipped = [h.get("train/skipped_steps") for h in trainer.state.log_history if "loss" in h]
with open(f"{out_dir}/rank{rank}.json", "w") as f:
    record = {"finite": bool(torch.isfinite(params).all()), "checksum": float(params.double().sum())}
    json.dump({**record, "skipped": skipped}, f)
shutdown_distributed()
