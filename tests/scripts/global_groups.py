"""Launched by tests/test_multiprocess.py with `accelerate launch --num_processes 2 --cpu`.

One group of 4 completions is split over 2 processes (2 rows each). Each process writes what it saw.
"""

import json
import os
import sys

from datasets import Dataset

from tests.helpers import TINY_TRAINING
from zrl_plugins import ZRLConfig, ZRLGRPOTrainer, hookimpl
from zrl_plugins.apps.distributed import shutdown_distributed
from zrl_plugins.framework.plugins import ZRLPluginManager

model_path, out_dir = sys.argv[1], sys.argv[2]
rank = int(os.environ.get("RANK", "0"))  # set by the launcher for each process


def rank_dependent_reward(prompts, completions, **kwargs):
    # different rewards on each process, so that per-process statistics would give different advantages
    return [float(3 * rank + i + len(c) % 2) for i, c in enumerate(completions)]


class Dump:
    def __init__(self):
        self.records = []

    @hookimpl
    def zrl_on_rollout_batch(self, trainer, batch):
        self.records.append(
            {
                "rank": rank,
                "num_processes": trainer.accelerator.num_processes,
                "global_rewards": batch["rewards"].tolist(),
                "local_advantages": batch["advantages"].tolist(),
            }
        )


dump = Dump()
pm = ZRLPluginManager()
pm.register_plugin(dump, name="dump")
ds = Dataset.from_list([{"prompt": f"What is {a} + 1?", "answer": str(a + 1)} for a in range(8)])
args = ZRLConfig(
    # TRL's default learning rate (1e-6), not the tiny trainers' 1e-2: this run checks statistics, not learning
    **{**TINY_TRAINING, "per_device_train_batch_size": 2, "max_completion_length": 6, "learning_rate": 1e-6},
    output_dir=f"{out_dir}/run",
    kl_penalty="k3",
    beta=0.01,
)
trainer = ZRLGRPOTrainer(model_path, rank_dependent_reward, args=args, train_dataset=ds, plugin_manager=pm)
trainer.train()
with open(f"{out_dir}/rank{rank}.json", "w") as f:
    json.dump(dump.records, f)
shutdown_distributed()
