"""CISPO, SAPO, LUSPO and VESPO: per-token policy objectives (before masking and aggregation), each equal to TRL's
``loss_type`` of the same name. w = π_θ / π_old is the importance ratio per token, or per sequence (geometric mean of
the token ratios) at ``importance_sampling_level="sequence"``; A the advantage; log π_θ the token's log-prob."""

from __future__ import annotations

import math

import torch

from zrl_plugins.sdk import ClipLoss, Level, PolicyLossOutput, log_importance_weights


class CISPO:
    """CISPO (MiniMax, "MiniMax-M1", 2025, arXiv:2506.13585): clip the importance-sampling *weight*, not the update:
    ℓ = −sg(min(w, ε_max)) · A · log π_θ. Every token keeps a gradient (PPO's clip zeroes those outside the trust
    region); the weight only scales it. Logged: ``cispo_clip_ratio`` (share of tokens with w > ε_max and A > 0).

    Args:
        epsilon_high: ε_max, the weight's upper bound (TRL's ``epsilon_high``; MiniMax use 5.0 at token level).
        importance_sampling_level: ``token`` or ``sequence``.
    """

    def __init__(self, epsilon_high: float = 5.0, importance_sampling_level: Level = "token"):
        self.epsilon_high = epsilon_high
        self.level: Level = importance_sampling_level

    def __call__(self, logps, old_logps, advantages, mask, importance_sampling_ratio=None) -> PolicyLossOutput:
        ratio = torch.exp(log_importance_weights(logps, old_logps, mask, self.level))
        weight = torch.clamp(ratio, max=self.epsilon_high).detach()
        clipped = (ratio > self.epsilon_high) & (advantages > 0)
        return PolicyLossOutput(-weight * advantages * logps, ratio, metrics={"cispo_clip_ratio": clipped.float()})


class SAPO:
    """SAPO (Gao et al. 2025, "Soft Adaptive Policy Optimization", arXiv:2511.20347): a smooth gate in place of the
    hard clip, ℓ = −(4/τ) σ(τ (w − 1)) · A with τ = τ_pos for A > 0 and τ_neg otherwise; its gradient is
    A·w·sech²(τ(w−1)/2), largest on-policy and decaying smoothly off it. Aggregated per sequence in TRL.

    Args:
        sapo_temperature_pos: τ for positive advantages (TRL default 1.0).
        sapo_temperature_neg: τ for negative ones (TRL default 1.05).
        importance_sampling_level: ``token`` or ``sequence``.
    """

    def __init__(
        self,
        sapo_temperature_pos: float = 1.0,
        sapo_temperature_neg: float = 1.05,
        importance_sampling_level: Level = "token",
    ):
        self.temperature_pos, self.temperature_neg = sapo_temperature_pos, sapo_temperature_neg
        self.level: Level = importance_sampling_level

    def __call__(self, logps, old_logps, advantages, mask, importance_sampling_ratio=None) -> PolicyLossOutput:
        ratio = torch.exp(log_importance_weights(logps, old_logps, mask, self.level))
        temperature = torch.where(advantages > 0, self.temperature_pos, self.temperature_neg)
        gate = torch.sigmoid(temperature * (ratio - 1)) * 4 / temperature
        return PolicyLossOutput(-gate * advantages, ratio)


class LUSPO(ClipLoss):
    """LUSPO (length-unbiased sequence policy optimization): GSPO's sequence-level clipped surrogate, aggregated as
    the mean over sequences of each sequence's token *sum* (TRL's ``loss_type="luspo"``; aggregation
    ``sequence_sum``), so that longer sequences are not down-weighted by a per-sequence mean. The per-token loss is
    PPO's clip; the default level is ``sequence`` (the paper's setup).

    Args: as :class:`zrl_plugins.builtins.policy_losses.ClipLoss`.
    """

    def __init__(
        self,
        epsilon_low: float = 0.2,
        epsilon_high: float | None = None,
        delta: float | None = None,
        importance_sampling_level: Level = "sequence",
    ):
        super().__init__(epsilon_low, epsilon_high, delta, importance_sampling_level)


@torch.no_grad()
def gamma_weights(
    advantages: torch.Tensor,
    log_ratio: torch.Tensor,
    mask: torch.Tensor,
    importance_sampling_ratio: torch.Tensor | None,
    k_pos: float,
    lambda_pos: float,
    k_neg: float,
    lambda_neg: float,
) -> torch.Tensor:
    """VESPO's sequence weight φ(w) = e^λ · w^k · e^(−λw) (φ(1) = 1), computed in log space, with
    w = exp(Σ_t clamp(log π_θ/π_old, ±20) [+ Σ_t log(π_old/π_behaviour)]) clamped to [1e-8, e^20] and (k, λ) chosen
    by the advantage's sign; no gradient (B x 1)."""
    floor = math.log(1e-8)
    seq_log_ratio = torch.sum(torch.clamp(log_ratio, -20.0, 20.0) * mask, dim=-1, keepdim=True)
    if importance_sampling_ratio is not None:
        log_is = torch.clamp(torch.log(importance_sampling_ratio), floor, 20.0)
        seq_log_ratio = seq_log_ratio + torch.sum(log_is, dim=-1, keepdim=True)
    log_w = torch.clamp(seq_log_ratio, floor, 20.0)
    nonnegative = advantages >= 0
    k = torch.where(nonnegative, k_pos, k_neg)
    lam = torch.where(nonnegative, lambda_pos, lambda_neg).clamp(min=1e-4)
    log_phi = lam + k * log_w - lam * torch.exp(log_w)
    return torch.exp(log_phi).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


class VESPO:
    """VESPO (variational sequence-level soft policy optimization): a REINFORCE-style token loss weighted by a smooth
    gamma kernel of the sequence importance ratio, ℓ = −sg(φ(w)) · A · log π_θ with φ(w) = e^λ w^k e^(−λw) (peaks at
    w = k/λ, vanishes far off-policy). The rollout's own correction π_old / π_behaviour enters w, so the trainer does
    not multiply the loss by it again. Logged: ``vespo/phi_seq_mean``.

    Args:
        vespo_k_pos, vespo_lambda_pos: (k, λ) for A ≥ 0 (TRL defaults 2, 3).
        vespo_k_neg, vespo_lambda_neg: (k, λ) for A < 0 (TRL defaults 3, 2).
    """

    uses_importance_sampling_ratio = True

    def __init__(
        self,
        vespo_k_pos: float = 2.0,
        vespo_lambda_pos: float = 3.0,
        vespo_k_neg: float = 3.0,
        vespo_lambda_neg: float = 2.0,
    ):
        self.k_pos, self.lambda_pos = vespo_k_pos, vespo_lambda_pos
        self.k_neg, self.lambda_neg = vespo_k_neg, vespo_lambda_neg

    def __call__(self, logps, old_logps, advantages, mask, importance_sampling_ratio=None) -> PolicyLossOutput:
        log_ratio = logps - old_logps
        phi = gamma_weights(
            advantages,
            log_ratio,
            mask,
            importance_sampling_ratio,
            self.k_pos,
            self.lambda_pos,
            self.k_neg,
            self.lambda_neg,
        )
        return PolicyLossOutput(-phi * advantages * logps, torch.exp(log_ratio), metrics={"vespo/phi_seq_mean": phi})
