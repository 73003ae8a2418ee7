"""KL penalties inside ZRLGRPOTrainer: resume exactness of β, LoRA reference without a copy, reference refresh."""

from __future__ import annotations

import os

import pytest
import torch
from datasets import Dataset

from tests.helpers import tiny_config
from zrl_plugins import ZRLGRPOTrainer


def digits_reward(prompts, completions, **kwargs):
    return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]


DATA = Dataset.from_list([{"prompt": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(16)])


def config(tmp_path, **overrides):
    return tiny_config(tmp_path, **{"max_steps": 4, **overrides})


ADAPTIVE = dict(
    kl_penalty="k2",
    beta=0.05,
    kl_penalty_kwargs={"controller": "adaptive", "controller_kwargs": {"target_kl": 1e-3, "horizon": 40}},
)


def _betas(trainer):
    return {h["step"]: h["kl_coef"] for h in trainer.state.log_history if "kl_coef" in h}


def test_adaptive_beta_moves_and_resume_gives_the_same_sequence(tmp_path, tiny_model_path):
    straight = ZRLGRPOTrainer(
        tiny_model_path,
        digits_reward,
        args=config(tmp_path / "a", save_strategy="steps", save_steps=2, **ADAPTIVE),
        train_dataset=DATA,
    )
    straight.train()
    betas = _betas(straight)
    assert sorted(betas) == [1, 2, 3, 4]
    assert len(set(betas.values())) == 4, f"β should change every step: {betas}"

    resumed = ZRLGRPOTrainer(
        tiny_model_path, digits_reward, args=config(tmp_path / "b", save_strategy="no", **ADAPTIVE), train_dataset=DATA
    )
    resumed.train(resume_from_checkpoint=os.path.join(straight.args.output_dir, "checkpoint-2"))
    resumed_betas = _betas(resumed)  # steps 1-2 come from the checkpoint's history, 3-4 were trained again
    assert sorted(resumed_betas) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed_betas[step] == pytest.approx(betas[step], rel=1e-9, abs=0), (step, resumed_betas, betas)
    assert resumed.kl_penalty.controller.beta == pytest.approx(straight.kl_penalty.controller.beta, rel=1e-9)


def test_lora_reference_is_the_base_model_with_adapters_disabled(tmp_path, tiny_model_path):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = config(tmp_path, kl_penalty="k2", beta=0.1, max_steps=2)
    trainer = ZRLGRPOTrainer(tiny_model_path, digits_reward, args=args, train_dataset=DATA, peft_config=lora)
    assert trainer.ref_model is None  # no second copy of the weights
    trainer.train()  # the adapters move away from zero

    trainer.model.train()
    out = trainer._generate_and_score_completions([dict(DATA[i]) for i in range(2) for _ in range(4)])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = base(input_ids=ids, attention_mask=attention).logits[:, -out["completion_ids"].size(1) - 1 : -1]
    base_logps = torch.log_softmax(logits / args.temperature, dim=-1).gather(-1, out["completion_ids"].unsqueeze(-1))
    mask = out["completion_mask"].bool()
    torch.testing.assert_close(out["ref_per_token_logps"][mask], base_logps.squeeze(-1)[mask], atol=1e-4, rtol=1e-4)
    policy = trainer._policy_logps(out)
    assert (policy[mask] - out["ref_per_token_logps"][mask]).abs().max() > 1e-4  # the adapters do matter


def test_reference_refresh_with_trls_sync(tmp_path, tiny_model_path):
    args = config(
        tmp_path,
        kl_penalty="low_var_kl",
        beta=0.1,
        max_steps=1,
        sync_ref_model=True,
        ref_model_sync_steps=1,
        ref_model_mixup_alpha=1.0,
    )
    trainer = ZRLGRPOTrainer(tiny_model_path, digits_reward, args=args, train_dataset=DATA)
    before = {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
    trainer.train()
    policy = dict(trainer.model.named_parameters())
    changed = [n for n, p in trainer.ref_model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "the reference was not refreshed"
    for name, param in trainer.ref_model.named_parameters():
        torch.testing.assert_close(param, policy[name].detach())
