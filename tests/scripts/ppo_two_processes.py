"""Launched by tests/test_ppo.py with 2 CPU processes (gloo): a PPO run (with pretraining-loss mixing: a second
forward in the same step) whose critic and actor must stay in sync."""

import json
import os
import sys

import torch
from datasets import Dataset

from tests.helpers import TINY_TRAINING
from zrl_plugins import ZRLPPOConfig, ZRLPPOTrainer
from zrl_plugins.apps.distributed import shutdown_distributed

model_path, out_dir = sys.argv[1], sys.argv[2]
rank = int(os.environ.get("RANK", "0"))


def rank_dependent_reward(prompts, completions, **kwargs):
    return [float(3 * rank + i + len(c) % 2) for i, c in enumerate(completions)]


def checksum(module):
    return float(sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(module.parameters())))


ds = Dataset.from_list([{"prompt": f"What is {a} + 1?", "answer": str(a + 1)} for a in range(8)])
args = ZRLPPOConfig(
    **{**TINY_TRAINING, "per_device_train_batch_size": 4, "max_completion_length": 6},
    output_dir=f"{out_dir}/run",
    critic_learning_rate=1e-2,
    ptx_coef=0.1,
)
texts = Dataset.from_list([{"text": f"{a} plus {a} is {2 * a}."} for a in range(20)])
trainer = ZRLPPOTrainer(model_path, rank_dependent_reward, args=args, train_dataset=ds, pretrain_dataset=texts)
critic_before, actor_before = checksum(trainer.critic), checksum(trainer.model)
trainer.train()
with open(f"{out_dir}/ppo_rank{rank}.json", "w") as f:
    json.dump(
        {
            "critic_checksum": checksum(trainer.critic),
            "actor_checksum": checksum(trainer.model),
            "critic_changed": checksum(trainer.critic) != critic_before,
            "actor_changed": checksum(trainer.model) != actor_before,
            "reward_moments": trainer.reward_moments.state_dict(),
        },
        f,
    )
torch.set_num_threads(1)
shutdown_distributed()
