"""With ``grpo`` + ``k3``, ZRLGRPOTrainer reproduces TRL's GRPOTrainer (loss_type="grpo", scale_rewards="group")."""

from __future__ import annotations

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from tests.helpers import TINY_TRAINING, char_count_reward, compare_with_trl, tiny_config
from zrl_plugins import ZRLGRPOTrainer

COMMON = dict(
    **TINY_TRAINING,
    beta=0.04,
    epsilon=0.2,
    epsilon_high=0.28,
    loss_type="grpo",
    scale_rewards="group",
)


def _trainers(tmp_path, model_path, dataset, **overrides):
    trl_args = GRPOConfig(output_dir=str(tmp_path / "trl"), **{**COMMON, **overrides})
    zrl_args = tiny_config(tmp_path, **{**COMMON, **overrides}, normalizer="grpo", kl_penalty="k3")
    trl = GRPOTrainer(model_path, char_count_reward, args=trl_args, train_dataset=dataset)
    zrl = ZRLGRPOTrainer(model_path, char_count_reward, args=zrl_args, train_dataset=dataset)
    return trl, zrl


def _batch(dataset, n_prompts=2, group=4):
    return [dict(dataset[i]) for i in range(n_prompts) for _ in range(group)]


@pytest.mark.parametrize(
    "options",
    [
        {"gradient_accumulation_steps": 1},
        {"gradient_accumulation_steps": 2},
        {"entropy_coef": 0.01},
        {"importance_sampling_level": "sequence"},
        {"delta": 1.1},
        {"top_entropy_quantile": 0.5},
        {"use_bias_correction_kl": False},
    ],
    ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()),
)
def test_rollout_advantages_loss_and_gradients_match_trl(tmp_path, tiny_model_path, arithmetic_dataset, options):
    trl, zrl = _trainers(tmp_path, tiny_model_path, arithmetic_dataset, **options)
    result = compare_with_trl(trl, zrl, _batch(arithmetic_dataset))
    trl_out, zrl_out = result["trl_out"], result["zrl_out"]

    assert torch.equal(trl_out["completion_ids"], zrl_out["completion_ids"])
    assert trl_out["advantages"].abs().sum() > 0, "the rewards must vary within groups for the test to mean anything"
    torch.testing.assert_close(zrl_out["advantages"], trl_out["advantages"], atol=1e-6, rtol=0)
    torch.testing.assert_close(zrl_out["ref_per_token_logps"], trl_out["ref_per_token_logps"], atol=1e-6, rtol=0)

    assert abs(result["trl_loss"].item()) > 1e-4
    torch.testing.assert_close(result["zrl_loss"], result["trl_loss"], atol=1e-6, rtol=0)
    trl_grads, zrl_grads = result["trl_grads"], result["zrl_grads"]
    assert trl_grads.keys() == zrl_grads.keys() and trl_grads
    for name in trl_grads:
        torch.testing.assert_close(zrl_grads[name], trl_grads[name], atol=1e-6, rtol=1e-5, msg=name)
    # the same metrics as TRL, computed the same way
    for key in ("kl", "entropy", "clip_ratio/region_mean", "clip_ratio/high_mean", "clip_ratio/low_mean"):
        assert zrl._metrics["train"][key][-1] == pytest.approx(trl._metrics["train"][key][-1], abs=1e-6), key


def test_equivalence_is_not_vacuous(tmp_path, tiny_model_path, arithmetic_dataset):
    """A different normalizer (here: grpo with another δ) must change the loss: the test above can fail."""
    trl, _ = _trainers(tmp_path, tiny_model_path, arithmetic_dataset)
    zrl_args = tiny_config(tmp_path, **COMMON, normalizer="grpo", normalizer_kwargs={"delta": 1.0})
    zrl = ZRLGRPOTrainer(tiny_model_path, char_count_reward, args=zrl_args, train_dataset=arithmetic_dataset)
    zrl.model.train()
    inputs = _batch(arithmetic_dataset)
    torch.manual_seed(123)
    trl_out = trl._generate_and_score_completions([dict(x) for x in inputs])
    torch.manual_seed(123)
    zrl_out = zrl._generate_and_score_completions([dict(x) for x in inputs])
    assert not torch.allclose(zrl_out["advantages"], trl_out["advantages"], atol=1e-3)


def test_kl_none_loads_no_reference_model(tmp_path, tiny_model_path, arithmetic_dataset):
    args = tiny_config(tmp_path, kl_penalty="none", beta=0.0)
    trainer = ZRLGRPOTrainer(tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset)
    assert trainer.ref_model is None and trainer.beta == 0.0
    trainer.model.train()
    out = trainer._generate_and_score_completions(_batch(arithmetic_dataset))
    assert "ref_per_token_logps" not in out

    with_ref = ZRLGRPOTrainer(
        tiny_model_path,
        char_count_reward,
        args=tiny_config(tmp_path, kl_penalty="k3", beta=0.1),
        train_dataset=arithmetic_dataset,
    )
    assert with_ref.ref_model is not None and with_ref.beta == 0.1


def test_on_cpu_only_completion_positions_are_projected_with_the_same_log_probs(
    tmp_path, tiny_model_path, arithmetic_dataset, monkeypatch
):
    """zrl's forward on CPU hands TRL's fused LM head only the labelled (completion) positions; TRL's own forward
    projects every position. Log-probs and entropies agree, and the switch does not leak out of zrl's forward."""
    import trl.trainer.utils as trl_utils

    rows_projected: list[int] = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def recording_apply(hidden, *args):
        rows_projected.append(hidden.shape[0])
        return apply(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", recording_apply)
    original_switch = trl_utils._use_triton
    trl, zrl = _trainers(tmp_path, tiny_model_path, arithmetic_dataset)
    torch.manual_seed(0)
    batch = zrl._generate_and_score_completions([dict(arithmetic_dataset[i]) for i in range(8)])
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    width = batch["completion_ids"].size(1)
    rows_projected.clear()
    with torch.no_grad():
        ours = zrl._get_per_token_logps_and_entropies(zrl.model, ids, mask, width, compute_entropy=True)
        theirs = trl._get_per_token_logps_and_entropies(trl.model, ids, mask, width, compute_entropy=True)
    assert trl_utils._use_triton is original_switch
    labelled = int(mask[:, -width:].sum())  # TRL labels the completion tokens, padding included up to the mask
    assert rows_projected[0] <= labelled < rows_projected[1] == ids.size(0) * (ids.size(1) - 1)
    completion = batch["completion_mask"].bool()
    torch.testing.assert_close(ours[0][completion], theirs[0][completion], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours[1][completion], theirs[1][completion], atol=1e-6, rtol=1e-6)
