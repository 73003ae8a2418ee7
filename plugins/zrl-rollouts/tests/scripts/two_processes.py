"""Launched by test_multiprocess.py with 2 CPU processes: a rollout strategy trains with DDP; each rank dumps what
it saw."""

import json
import os
import sys

from datasets import Dataset

from tests.helpers import TINY_TRAINING
from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
from zrl_plugins.apps.distributed import shutdown_distributed

model_path, out_dir, rollout, rollout_kwargs = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
rank = int(os.environ.get("RANK", "0"))


def parity_reward(prompts, completions, a, **kwargs):
    # even a: constant reward (an uninformative group); odd a: varies with the completion
    return [1.0 if x % 2 == 0 else float(len(c) % 3) for c, x in zip(completions, a, strict=True)]


ds = Dataset.from_list([{"prompt": f"What is {a} + 1?", "answer": str(a + 1), "a": a} for a in range(16)])
args = ZRLConfig(
    **{**TINY_TRAINING, "per_device_train_batch_size": 4, "max_completion_length": 6},
    output_dir=f"{out_dir}/run",
    kl_penalty="none",
    rollout=rollout,
    rollout_kwargs=rollout_kwargs,
)
trainer = ZRLGRPOTrainer(model_path, parity_reward, args=args, train_dataset=ds)
trainer.train()
checksum = float(sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(trainer.model.parameters())))
logs = [h for h in trainer.state.log_history if "loss" in h]
with open(f"{out_dir}/rank{rank}.json", "w") as f:
    json.dump({"checksum": checksum, "logs": logs, "state": trainer.rollout_strategy.state_dict()}, f)
shutdown_distributed()
