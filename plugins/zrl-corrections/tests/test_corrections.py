"""Each correction against its formula, by hand, on a few tokens; IcePop against TRL's token_mask; one trained run."""

from __future__ import annotations

import math

import pytest
import torch
from zrl_corrections import BatchNormalizedIS, GeometricMeanMask, IcePop

from zrl_plugins import PluginError, load_component

# token ratios r = π_old / π_behaviour: row 0: 2, 0.25, (padding); row 1: 1.0005, 1.0005, 0.6
RATIOS = torch.tensor([[2.0, 0.25, 7.0], [1.0005, 1.0005, 0.6]])
BEHAVIOUR = torch.log(torch.tensor([[0.2, 0.4, 0.1], [0.3, 0.3, 0.6]]))
OLD = BEHAVIOUR + torch.log(RATIOS)
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_icepop_keeps_the_ratio_inside_the_band_and_zeroes_it_outside():
    out = IcePop(alpha=0.5, beta=5.0)(OLD, BEHAVIOUR, MASK)
    # 2 in [0.5, 5] → 2; 0.25 < 0.5 → 0; 1.0005 → 1.0005; 0.6 → 0.6
    torch.testing.assert_close(out.weights[MASK.bool()], torch.tensor([2.0, 0.0, 1.0005, 1.0005, 0.6]))
    assert out.mask is None  # masked tokens stay in the denominator, as in the paper's objective
    assert out.metrics["icepop_masked_fraction"] == pytest.approx(1 / 5)


def test_icepop_equals_trls_token_mask_with_the_same_band():
    trl = load_component("rollout_correction", "token_mask", clip_min=0.5, clip_max=5.0)(OLD, BEHAVIOUR, MASK)
    ours = IcePop(alpha=0.5, beta=5.0)(OLD, BEHAVIOUR, MASK)
    torch.testing.assert_close(ours.weights * MASK, trl.weights * MASK)


def test_geometric_mean_mask_rejects_sequences_outside_the_band():
    out = GeometricMeanMask(upper=1.001)(OLD, BEHAVIOUR, MASK)
    # row 0: g = sqrt(2 · 0.25) = 0.707 < 1/1.001 → rejected; row 1: g = (1.0005² · 0.6)^(1/3) = 0.844 → rejected
    assert out.mask.tolist() == [[0.0], [0.0]]
    out = GeometricMeanMask(upper=1.3, lower=0.75)(OLD, BEHAVIOUR, MASK)
    g1 = (1.0005**2 * 0.6) ** (1 / 3)
    assert g1 > 0.75 and out.mask.tolist() == [[0.0], [1.0]]  # 0.707 < 0.75: only row 0 is rejected
    assert out.metrics["geo_mask_rejected_fraction"] == pytest.approx(0.5)
    assert (out.weights == 1).all()
    # the veto rejects row 1 for its token with r = 0.6 < 0.65, whatever its mean
    assert GeometricMeanMask(upper=1.3, lower=0.75, veto=0.65)(OLD, BEHAVIOUR, MASK).mask.tolist() == [[0.0], [0.0]]
    # without a mismatch every sequence passes even the tight default band
    assert GeometricMeanMask()(OLD, OLD, MASK).mask.tolist() == [[1.0], [1.0]]


def test_batch_normalized_weights_by_hand():
    out = BatchNormalizedIS(level="token", threshold=1.5)(OLD, BEHAVIOUR, MASK)
    truncated = torch.tensor([1.5, 0.25, 1.0005, 1.0005, 0.6])  # min(r, 1.5) on the five completion tokens
    mean = truncated.mean()
    torch.testing.assert_close(out.weights[MASK.bool()], truncated / mean)
    assert out.weights[0, 2] == 0.0  # padding
    assert out.metrics["batch_norm_factor"] == pytest.approx(mean.item())
    assert out.weights[MASK.bool()].mean().item() == pytest.approx(1.0)

    out = BatchNormalizedIS(level="sequence", threshold=2.0)(OLD, BEHAVIOUR, MASK)
    sequence = torch.tensor([min(2.0 * 0.25, 2.0), min(1.0005**2 * 0.6, 2.0)])  # products of the ratios
    torch.testing.assert_close(out.weights.squeeze(1), sequence / sequence.mean())
    assert out.weights.shape == (2, 1)


def test_nan_behaviour_logps_count_as_agreement():
    behaviour = BEHAVIOUR.clone()
    behaviour[0, 1] = math.nan  # a token the engine could not score
    out = IcePop()(OLD, behaviour, MASK)
    assert out.weights[0, 1] == 1.0 and torch.isfinite(out.weights).all()


def test_bad_options_name_the_component():
    with pytest.raises(PluginError, match="alpha < 1 < beta"):
        load_component("rollout_correction", "icepop", alpha=2.0)
    with pytest.raises(PluginError, match="lower <= 1 <= upper"):
        load_component("rollout_correction", "geo_mask", upper=0.9)
    with pytest.raises(PluginError, match="level must be"):
        load_component("rollout_correction", "batch_norm_is", level="geometric")


def test_training_with_a_rollout_that_reports_behaviour_logps(tiny_model_path, tmp_path):
    """Any rollout_func returning log-probs is corrected: here geometric-mean masking rejects some sequences of a
    behaviour policy that is the policy plus noise, and the run trains on the rest."""
    from datasets import Dataset

    from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
    from zrl_plugins.sdk import generate_with_trl, token_logps

    generator = torch.Generator().manual_seed(0)

    def noisy_rollout(prompts, trainer):
        out = generate_with_trl(prompts, trainer)
        exact = token_logps(trainer, out["prompt_ids"], out["completion_ids"])
        out["logprobs"] = [[lp + 0.3 * torch.randn((), generator=generator).item() for lp in row] for row in exact]
        return out

    data = Dataset.from_list([{"prompt": f"What is {a} + {a + 1}?"} for a in range(16)])
    args = ZRLConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        beta=0.0,
        rollout_correction="geo_mask",
        rollout_correction_kwargs={"upper": 1.1},
    )
    trainer = ZRLGRPOTrainer(
        tiny_model_path,
        lambda completions, **kw: [float(len(c)) for c in completions],
        args=args,
        train_dataset=data,
        rollout_func=noisy_rollout,
    )
    trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert 0.0 < log["rollout/geo_mask_rejected_fraction"] < 1.0
    assert log["rollout/masked_fraction"] > 0 and math.isfinite(log["loss"])
