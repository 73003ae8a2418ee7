"""One optimizer step's gradient for each normalizer, written to ``OUT_DIR/<normalizer>.pt`` by the main process.

    python one_step_gradients.py MODEL_PATH OUT_DIR ACCUMULATION            # 1 process, ACCUMULATION micro-batches
    accelerate launch --multi_gpu --num_processes 2 one_step_gradients.py MODEL_PATH OUT_DIR 1   # 2 CPU processes

Launched by ``test_processes_and_accumulation.py``. The global batch is the same in both layouts: 2 groups of 4
completions. A deterministic rollout makes every completion a function of its prompt and its place in the group, so
the two layouts train on identical rows and only the split (processes vs accumulated micro-batches) differs.
"""

from __future__ import annotations

import sys
import zlib

import torch
from datasets import Dataset
from transformers import TrainerCallback

from zrl_plugins import ZRLConfig, ZRLGRPOTrainer, hookimpl
from zrl_plugins.apps.distributed import shutdown_distributed
from zrl_plugins.builtins.normalizers import GRPONormalizer
from zrl_plugins.framework.plugins import ZRLPluginManager

NORMALIZERS = ["grpo", "dr_grpo", "lite_ppo", "batch", "rloo", "none", "local_token_mean"]
GROUP = 4
ROWS_PER_STEP = 8  # 2 groups


class PromptDeterminedRollout:
    """Completion j of a prompt's group is a fixed token sequence whose length (2..6 tokens) depends on the prompt
    and on j, so advantages, lengths and masks differ across rows but not across layouts. Each process receives whole
    groups here (per-device batch = one group), so j is the place in the group on every layout."""

    replaces_generation = True
    off_policy = False

    def __call__(self, prompts, trainer):
        prompt_ids, _, _ = trainer._tokenize_prompts(list(prompts))
        seen: dict[str, int] = {}
        completion_ids = []
        for prompt in prompts:
            j = seen[prompt] = seen.get(prompt, -1) + 1
            seed = zlib.crc32(f"{prompt}|{j}".encode())
            length = 2 + seed % 5
            completion_ids.append([20 + (seed >> (3 * k)) % 40 for k in range(length)])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}


class LocalTokenMean(GRPONormalizer):
    """The control: a token mean over each micro-batch's own tokens (what a normalizer that ignores
    ``ctx.num_items_in_batch`` would do). Its gradient depends on the split, so the test must see the layouts differ."""

    def aggregate(self, per_token_loss, mask, ctx):
        return (per_token_loss * mask).sum() / mask.sum() / ctx.gradient_accumulation_steps


class TestPlugin:
    @hookimpl
    def zrl_register_rollouts(self, register):
        register("prompt_determined", PromptDeterminedRollout)

    @hookimpl
    def zrl_register_normalizers(self, register):
        register("local_token_mean", LocalTokenMean)


def reward(prompts, completions, completion_ids, **kwargs):
    return [float(sum(ids) % 7) for ids in completion_ids]


class GradientCapture(TrainerCallback):
    """The gradients the optimizer is about to apply (after DDP's all-reduce and all accumulation)."""

    def __init__(self):
        self.gradient = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradient = torch.cat([p.grad.detach().flatten() for p in model.parameters() if p.grad is not None])


def main() -> None:
    model_path, out_dir, accumulation = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = Dataset.from_list([{"prompt": f"What is {a} + {a + 3}?"} for a in range(16)])
    for normalizer in NORMALIZERS:
        plugins = ZRLPluginManager()
        plugins.register_plugin(TestPlugin(), name="one-step-gradients")
        capture = GradientCapture()
        args = ZRLConfig(
            output_dir=f"{out_dir}/run-{normalizer}",
            per_device_train_batch_size=GROUP,
            num_generations=GROUP,
            gradient_accumulation_steps=accumulation,
            max_completion_length=6,
            max_steps=1,
            learning_rate=1e-3,
            max_grad_norm=0.0,
            report_to=[],
            use_cpu=True,
            bf16=False,
            save_strategy="no",
            gradient_checkpointing=False,
            seed=0,
            kl_penalty="none",
            normalizer=normalizer,
            rollout="prompt_determined",
        )
        trainer = ZRLGRPOTrainer(
            model_path, reward, args=args, train_dataset=data, plugin_manager=plugins, callbacks=[capture]
        )
        rows = GROUP * accumulation * trainer.accelerator.num_processes
        if rows != ROWS_PER_STEP:
            raise SystemExit(f"layout gives {rows} rows per step, expected {ROWS_PER_STEP}")
        trainer.train()
        if trainer.accelerator.is_main_process:
            torch.save(capture.gradient, f"{out_dir}/{normalizer}.pt")
    shutdown_distributed()


if __name__ == "__main__":
    main()
