"""Launched by tests/test_padding_free.py with 2 CPU processes (gloo): the gradients all-reduced at each optimizer
step, padded and with padding_free + a token budget (the parts' count agreed between the processes, DDP reducing in
the last part's backward only). Learning rate 0: both runs sample the same completions at every step."""

import json
import os
import sys

import torch
from transformers import TrainerCallback

from tests.helpers import TINY_TRAINING, char_count_reward
from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
from zrl_plugins.apps.distributed import shutdown_distributed

model_path, out_dir = sys.argv[1], sys.argv[2]
rank = int(os.environ.get("RANK", "0"))


class GradientNorms(TrainerCallback):
    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.norms += [float(p.grad.norm()) for p in model.parameters() if p.grad is not None]


from datasets import Dataset  # noqa: E402

data = Dataset.from_list([{"prompt": "What is " + " + ".join(["1"] * (a % 5 + 1)) + "?"} for a in range(16)])
result = {}
for name, extra in (("padded", {}), ("packed", {"padding_free": True, "max_tokens_per_microbatch": 20})):
    args = ZRLConfig(
        **{**TINY_TRAINING, "per_device_train_batch_size": 4, "max_completion_length": 8, "learning_rate": 0.0},
        **extra,
        output_dir=f"{out_dir}/{name}",
        beta=0.04,
    )
    norms = GradientNorms()
    trainer = ZRLGRPOTrainer(model_path, char_count_reward, args=args, train_dataset=data, callbacks=[norms])
    trainer.train()
    result[name] = norms.norms
    result["parts"] = [e["microbatch_parts"] for e in trainer.state.log_history if "microbatch_parts" in e]
with open(f"{out_dir}/rank{rank}.json", "w") as f:
    json.dump(result, f)
torch.set_num_threads(1)
shutdown_distributed()
