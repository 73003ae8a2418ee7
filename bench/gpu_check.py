"""On a CUDA machine: ZRLGRPOTrainer (grpo + k3) against TRL's GRPOTrainer on the GPU, same inputs.

python -m bench.gpu_check     # writes bench/results/gpu_equivalence.json
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def main() -> None:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from bench.common import write_results
    from tests.helpers import compare_with_trl
    from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
    from zrl_plugins.apps.tiny_model import build_tiny_model

    assert torch.cuda.is_available(), "needs a GPU"
    workdir = tempfile.mkdtemp()
    model = str(build_tiny_model(os.path.join(workdir, "tiny")))
    data = Dataset.from_list([{"prompt": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(16)])

    def reward(prompts, completions, **kwargs):
        return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]

    common = dict(
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        report_to=[],
        bf16=False,
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
        beta=0.04,
        loss_type="grpo",
        scale_rewards="group",
    )
    trl = GRPOTrainer(model, reward, args=GRPOConfig(output_dir=f"{workdir}/t", **common), train_dataset=data)
    zrl = ZRLGRPOTrainer(model, reward, args=ZRLConfig(output_dir=f"{workdir}/z", **common), train_dataset=data)
    result = compare_with_trl(trl, zrl, [dict(data[i]) for i in range(2) for _ in range(4)])
    diffs = {
        "device": torch.cuda.get_device_name(0),
        "model_on": str(next(zrl.model.parameters()).device),
        "advantages_max_abs_diff": (result["zrl_out"]["advantages"] - result["trl_out"]["advantages"])
        .abs()
        .max()
        .item(),
        "loss_abs_diff": (result["zrl_loss"] - result["trl_loss"]).abs().item(),
        "loss": result["trl_loss"].item(),
        "grad_max_abs_diff": max(
            (result["zrl_grads"][n] - g).abs().max().item() for n, g in result["trl_grads"].items()
        ),
    }
    zrl.args.max_steps = 3
    zrl.train()
    diffs["train_steps_done"] = zrl.state.global_step
    print(diffs)
    assert diffs["model_on"].startswith("cuda")
    assert (
        diffs["advantages_max_abs_diff"] < 1e-5 and diffs["loss_abs_diff"] < 1e-5 and diffs["grad_max_abs_diff"] < 1e-5
    )
    table = (
        "| device | advantages max diff | loss diff | gradient max diff |\n|---|---|---|---|\n"
        f"| {diffs['device']} | {diffs['advantages_max_abs_diff']:.1e} | {diffs['loss_abs_diff']:.1e} | "
        f"{diffs['grad_max_abs_diff']:.1e} |"
    )
    write_results("gpu_equivalence", diffs, table)


if __name__ == "__main__":
    main()
