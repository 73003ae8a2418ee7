"""The rollout_correction kind: TRL's four modes by hand and equal to TRL's own code path, TIS by hand, the translation
of TRL's options, the mismatch statistics, and the trainer applying weights and rejection masks for any behaviour
policy that reports log-probs."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from trl import GRPOConfig, GRPOTrainer

from tests.helpers import TINY_TRAINING, char_count_reward, loss_and_gradients, perturbed_batch, tiny_config
from zrl_plugins import ZRLConfig, ZRLGRPOTrainer, load_component
from zrl_plugins.framework.errors import ComponentContractError, ConfigError
from zrl_plugins.framework.hookspecs import hookimpl
from zrl_plugins.framework.protocols import CorrectionOutput
from zrl_plugins.framework.rollout_correction import mismatch_stats
from zrl_plugins.sdk import token_logps
from zrl_plugins.trainers.correction_options import resolve_rollout_correction

# token ratios r = π_old / π_behaviour; row 0 has padding at the end
RATIOS = torch.tensor([[2.0, 0.25, 9.0], [1.2, 1.5, 0.6]])
BEHAVIOUR = torch.log(torch.tensor([[0.2, 0.4, 0.1], [0.3, 0.3, 0.6]]))
OLD = BEHAVIOUR + torch.log(RATIOS)
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])
SEQUENCE = torch.tensor([[2.0 * 0.25], [1.2 * 1.5 * 0.6]])  # products over completion tokens: 0.5 and 1.08


CPU = {"use_cpu": True, "bf16": False, "report_to": []}


def correct(name, **kwargs):
    return load_component("rollout_correction", name, **kwargs)(OLD, BEHAVIOUR, MASK)


def test_trl_modes_by_hand():
    out = correct("token_truncate", clip_min=0.5, clip_max=1.6)
    torch.testing.assert_close(out.weights[MASK.bool()], torch.tensor([1.6, 0.5, 1.2, 1.5, 0.6]))
    out = correct("token_mask", clip_min=0.5, clip_max=1.6)
    torch.testing.assert_close(out.weights[MASK.bool()], torch.tensor([0.0, 0.0, 1.2, 1.5, 0.6]))
    assert out.mask is None  # a weight of 0: the token stays in the denominator, as in TRL
    out = correct("sequence_truncate", clip_min=0.6, clip_max=1.05)
    torch.testing.assert_close(out.weights, torch.tensor([[0.6], [1.05]]))
    out = correct("sequence_mask", clip_min=0.6, clip_max=3.0)
    torch.testing.assert_close(out.weights, torch.tensor([[0.0], [1.08]]))
    # TRL's defaults: clip_max 3, no lower bound
    torch.testing.assert_close(correct("sequence_mask").weights, SEQUENCE)
    torch.testing.assert_close(correct("token_truncate").weights[0, :2], torch.tensor([2.0, 0.25]))


def test_tis_and_none_by_hand():
    out = correct("token_tis", clip=1.4)
    torch.testing.assert_close(out.weights[MASK.bool()], torch.tensor([1.4, 0.25, 1.2, 1.4, 0.6]))
    assert out.metrics["is_truncated_fraction"] == pytest.approx(2 / 5)
    out = correct("seq_tis", clip=1.4)  # geometric means: sqrt(0.5) and 1.08^(1/3)
    torch.testing.assert_close(out.weights, torch.tensor([[math.sqrt(0.5)], [1.08 ** (1 / 3)]]))
    assert (correct("none").weights == 1).all()


def test_mismatch_statistics_by_hand():
    weights = correct("token_mask", clip_min=0.5, clip_max=1.6).weights
    stats = mismatch_stats(OLD, BEHAVIOUR, MASK, weights, None)
    log_r = torch.log(torch.tensor([2.0, 0.25, 1.2, 1.5, 0.6]))
    assert stats["rollout/behaviour_kl"] == pytest.approx(-log_r.mean().item(), rel=1e-5)
    assert stats["rollout/behaviour_kl_k3"] == pytest.approx((log_r.exp() - 1 - log_r).mean().item(), rel=1e-5)
    w = SEQUENCE.flatten()
    assert stats["rollout/ess"] == pytest.approx((w.sum() ** 2 / (2 * (w**2).sum())).item(), rel=1e-5)
    assert stats["rollout/masked_fraction"] == pytest.approx(2 / 5)  # the two tokens given weight 0
    assert stats["rollout/is_weight_min"] == pytest.approx(0.25) and stats["rollout/is_weight_max"] == pytest.approx(2)
    assert stats["sampling/importance_sampling_ratio/min"] == 0.0
    assert stats["sampling/importance_sampling_ratio/mean"] == pytest.approx((1.2 + 1.5 + 0.6) / 5)
    assert stats["sampling/sampling_logp_difference/max"] == pytest.approx(math.log(4), rel=1e-5)
    # a rejection mask counts too
    rejected = mismatch_stats(OLD, BEHAVIOUR, MASK, torch.ones(2, 1), torch.tensor([[0.0], [1.0]]).expand(2, 3))
    assert rejected["rollout/masked_fraction"] == pytest.approx(2 / 5)


# ------------------------------------------------------------------------------------------------ TRL's options
def test_trl_options_translate_into_the_component(tmp_path):
    def config(**options):
        return ZRLConfig(output_dir=str(tmp_path), **CPU, **options)

    assert config().rollout_correction is None  # no vLLM: the trainer decides (TIS off-policy, else none)
    resolved = config(use_vllm=True)  # TRL's defaults with vLLM
    assert resolved.rollout_correction == "sequence_mask"
    assert resolved.rollout_correction_kwargs == {"clip_min": None, "clip_max": 3.0}
    bounds = {"vllm_importance_sampling_clip_min": 0.5, "vllm_importance_sampling_clip_max": 2.0}
    resolved = config(use_vllm=True, vllm_importance_sampling_mode="token_truncate", **bounds)
    assert resolved.rollout_correction == "token_truncate"
    assert resolved.rollout_correction_kwargs == {"clip_min": 0.5, "clip_max": 2.0}
    assert config(use_vllm=True, vllm_importance_sampling_correction=False).rollout_correction == "none"
    explicit = config(rollout_correction="token_mask", vllm_importance_sampling_clip_max=2.0)
    assert explicit.rollout_correction_kwargs["clip_max"] == 2.0  # TRL's bound field keeps its meaning
    assert explicit.vllm_importance_sampling_correction and explicit.vllm_importance_sampling_mode == "token_mask"
    before = (explicit.rollout_correction, dict(explicit.rollout_correction_kwargs))
    resolve_rollout_correction(explicit)  # resolving twice changes nothing
    assert (explicit.rollout_correction, explicit.rollout_correction_kwargs) == before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rollout_correction": "token_tis", "vllm_importance_sampling_correction": False}, "contradicts"),
        ({"rollout_correction": "token_tis", "vllm_importance_sampling_mode": "token_mask"}, "contradicts"),
        ({"vllm_importance_sampling_mode": "token"}, "must be one of"),
        ({"rollout_correction_kwargs": {"clip": 2}}, "without rollout_correction"),
        (
            {
                "rollout_correction": "token_mask",
                "rollout_correction_kwargs": {"clip_max": 2.0},
                "vllm_importance_sampling_clip_max": 4.0,
            },
            "clip_max=2.0 contradicts",
        ),
    ],
)
def test_contradictions_are_refused(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        ZRLConfig(output_dir=str(tmp_path), **CPU, **options)


# ------------------------------------------------------------------------------------------------ against TRL
def fake_vllm(trainer, noise_seed=0):
    """Make ``trainer`` believe it generates with vLLM: fixed completions, and behaviour log-probs that are the
    policy's own plus noise (so ratios fall on both sides of the clip bounds)."""
    generator = torch.Generator().manual_seed(noise_seed)

    def generate(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        lengths = [3 + (i % 6) for i in range(len(prompt_ids))]
        completion_ids = [torch.randint(10, 60, (n,), generator=generator).tolist() for n in lengths]
        exact = token_logps(trainer, prompt_ids, completion_ids)
        noisy = [[lp + 0.4 * torch.randn((), generator=generator).item() for lp in row] for row in exact]
        return completion_ids, noisy

    trainer.use_vllm = True
    trainer._generate_single_turn = generate


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_trl_modes_equal_trls_numbers(mode, tmp_path, tiny_model_path, arithmetic_dataset):
    """TRL's own `_generate_and_score_completions` (vLLM branch) and zrl's component on the same behaviour log-probs:
    the same ratio, the same logged statistics, the same loss and gradients."""
    bounds = {"vllm_importance_sampling_clip_min": 0.7, "vllm_importance_sampling_clip_max": 1.3}
    options = {**TINY_TRAINING, "beta": 0.0, "loss_type": "dapo", **bounds}
    trl_args = GRPOConfig(output_dir=str(tmp_path / "t"), vllm_importance_sampling_mode=mode, **options)
    zrl_args = ZRLConfig(output_dir=str(tmp_path / "z"), rollout_correction=mode, **options)
    trl = GRPOTrainer(tiny_model_path, char_count_reward, train_dataset=arithmetic_dataset, args=trl_args)
    zrl = ZRLGRPOTrainer(tiny_model_path, char_count_reward, train_dataset=arithmetic_dataset, args=zrl_args)
    inputs = [dict(arithmetic_dataset[i]) for i in range(2) for _ in range(4)]
    outputs, losses = {}, {}
    for name, trainer in (("trl", trl), ("zrl", zrl)):
        fake_vllm(trainer)
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        outputs[name] = trainer._generate_and_score_completions([dict(x) for x in inputs])
        losses[name] = loss_and_gradients(trainer, perturbed_batch(outputs[name]))
    trl_out, zrl_out = outputs["trl"], outputs["zrl"]
    torch.testing.assert_close(zrl_out["sampling_per_token_logps"], trl_out["sampling_per_token_logps"])
    torch.testing.assert_close(zrl_out["old_per_token_logps"], trl_out["old_per_token_logps"], atol=1e-6, rtol=0)
    ratio = trl_out["importance_sampling_ratio"]
    assert ratio.shape == zrl_out["importance_sampling_ratio"].shape == ((8, 1) if "sequence" in mode else (8, 8))
    torch.testing.assert_close(zrl_out["importance_sampling_ratio"], ratio, atol=1e-5, rtol=1e-5)
    mask = trl_out["completion_mask"].bool()
    flat = ratio.flatten() if ratio.shape[1] == 1 else ratio[mask]
    assert (flat == 0).any() or (flat == bounds["vllm_importance_sampling_clip_min"]).any()  # the bounds bite
    ratio_keys = [f"importance_sampling_ratio/{k}" for k in ("min", "mean", "max")]
    for key in [*ratio_keys, "sampling_logp_difference/mean", "sampling_logp_difference/max"]:
        trl_value = trl._metrics["train"][f"sampling/{key}"][-1]
        assert zrl._metrics["train"][f"sampling/{key}"][-1] == pytest.approx(trl_value, abs=1e-5), key
    torch.testing.assert_close(losses["zrl"][0], losses["trl"][0], atol=1e-6, rtol=1e-5)
    for name, grad in losses["trl"][1].items():
        torch.testing.assert_close(losses["zrl"][1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


# ------------------------------------------------------------------------------------------------ in the trainer
class RejectFirstRow:
    """A test correction: weight 2 everywhere, row 0 rejected."""

    def __call__(self, old_logps, behaviour_logps, mask):
        keep = torch.ones(old_logps.shape[0], 1)
        keep[0] = 0.0
        return CorrectionOutput(weights=torch.full_like(old_logps, 2.0), mask=keep, metrics={"calls": 1.0})


class WrongShape:
    def __call__(self, old_logps, behaviour_logps, mask):
        return CorrectionOutput(weights=torch.ones(old_logps.shape[0] + 1, 1))


class TestCorrections:
    @hookimpl
    def zrl_register_rollout_corrections(self, register):
        register("reject_first_row", RejectFirstRow)
        register("wrong_shape", WrongShape)


def test_weights_and_rejections_reach_the_loss(tmp_path, tiny_model_path, arithmetic_dataset, fresh_pm):
    fresh_pm.register_plugin(TestCorrections(), name="test-corrections")
    args = tiny_config(tmp_path, rollout_correction="reject_first_row", beta=0.0)
    trainer = ZRLGRPOTrainer(
        tiny_model_path, char_count_reward, train_dataset=arithmetic_dataset, plugin_manager=fresh_pm, args=args
    )
    fake_vllm(trainer)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    out = trainer._generate_and_score_completions([dict(arithmetic_dataset[i]) for i in range(2) for _ in range(4)])
    mask = out["completion_mask"].float()
    assert (out["importance_sampling_ratio"] == 2.0).all()
    assert out["rollout_correction_mask"][0].sum() == 0 and (out["rollout_correction_mask"][1:] == mask[1:]).all()
    assert out["num_items_in_batch"] == mask[1:].sum()  # rejected tokens leave the count
    metrics = trainer._metrics["train"]
    assert metrics["rollout/calls"] == [1.0] and metrics["rollout/masked_fraction"][-1] > 0
    assert "rollout/behaviour_kl" in metrics and "rollout/ess" in metrics

    # the loss of the batch with row 0 rejected is the loss of the same batch with row 0's completion masked out
    batch = perturbed_batch(out)
    batch["rollout_correction_mask"] = out["rollout_correction_mask"]
    by_hand = {k: v for k, v in batch.items() if k != "rollout_correction_mask"}
    by_hand["completion_mask"] = batch["completion_mask"] * batch["rollout_correction_mask"].long()
    torch.testing.assert_close(loss_and_gradients(trainer, batch)[0], loss_and_gradients(trainer, by_hand)[0])


def test_a_wrong_shape_is_the_components_fault(tmp_path, tiny_model_path, arithmetic_dataset, fresh_pm):
    fresh_pm.register_plugin(TestCorrections(), name="test-corrections")
    args = tiny_config(tmp_path, rollout_correction="wrong_shape")
    trainer = ZRLGRPOTrainer(
        tiny_model_path, char_count_reward, train_dataset=arithmetic_dataset, plugin_manager=fresh_pm, args=args
    )
    fake_vllm(trainer)
    trainer.model.train()
    with pytest.raises(ComponentContractError, match="rollout_correction 'wrong_shape' returned weights of shape"):
        trainer._generate_and_score_completions([dict(arithmetic_dataset[i]) for i in range(2) for _ in range(4)])


def test_top_k_with_vllm_and_a_correction_warns(tmp_path):
    from zrl_plugins.trainers.correction_options import warn_truncated_support

    config = ZRLConfig(output_dir=str(tmp_path), top_k=50, top_p=0.9, **CPU)
    config.use_vllm = True  # vLLM is not installed here: the warning is decided from the config alone
    with pytest.warns(UserWarning, match="top_k=50, top_p=0.9 with vLLM"):
        warn_truncated_support(config, "sequence_mask")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_truncated_support(config, "none")  # nothing to correct: no warning


def test_zrl_plugins_lists_the_kind(capsys):
    from zrl_plugins.apps.cli import main as cli_main

    assert cli_main(["plugins"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    listed = {row[1] for row in rows if row and row[0] == "rollout_correction"}
    core = {"none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "token_tis", "seq_tis"}
    assert core <= listed
