"""``ZRLPPOConfig``: the PPO / PPO-max options on top of:class:`~zrl_plugins.ZRLConfig` (docs/methods.md#ppo).

PPO's loop maps onto TRL's GRPO machinery: one rollout batch is ``steps_per_generation`` mini-batches (optimizer
steps), and ``num_iterations`` is the number of PPO epochs over it. The per-token ``advantage_estimator`` (``gae`` by
default; ``reinforce_pp`` needs no critic) also aggregates the loss, so PPO has no ``normalizer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..framework.errors import ConfigError
from .config import ZRLConfig, _parse_kwargs

REWARD_SCALING = ("none", "std", "mean_std")


@dataclass
class ZRLPPOConfig(ZRLConfig):
    """Configuration of :class:`zrl_plugins.ZRLPPOTrainer`. Defaults follow the PPO-max paper's shipped scripts
    (Zheng et al. 2023, MOSS-RLHF): critic lr 1.5e-6, γ = 1, λ = 0.95, value clip 0.2, policy clip 0.2, KL 0.01 in
    the reward, running reward scaling then clipping to ±10, global advantage whitening, gradient clipping 1.0.
    """

    _per_token_advantages: ClassVar[bool] = True

    advantage_estimator: str = field(
        default="gae",
        metadata={
            "help": "Per-token advantage estimator by name (`gae` with a critic, `reinforce_pp` without); its options "
            "(`gamma`, `lam`) go in `advantage_estimator_kwargs`."
        },
    )
    advantage_estimator_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments of the advantage estimator (JSON object on the CLI)."}
    )
    beta: float = field(
        default=0.01,
        metadata={
            "help": "KL coefficient; with PPO the KL penalty is placed in the per-token reward unless "
            "`kl_penalty_kwargs` sets `placement`."
        },
    )
    critic_mode: str = field(
        default="separate",
        metadata={
            "help": "`separate`: the critic is its own backbone copy with a value head (own learning rate); "
            "`shared`: a value head on the policy's own backbone (no second copy; the value loss, weighted by "
            "`vf_coef`, also trains the backbone)."
        },
    )
    vf_coef: float = field(default=1.0, metadata={"help": "Weight of the value loss in the total loss."})
    critic_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Model to initialise the critic from (e.g. a reward model saved as a sequence- or "
            "token-classification model, whose `score` head is reused); default: the policy's weights with a "
            "new zero-initialised value head."
        },
    )
    critic_learning_rate: float = field(
        default=1.5e-6, metadata={"help": "Learning rate of the critic (the actor uses `learning_rate`)."}
    )
    critic_warmup_steps: int = field(
        default=0,
        metadata={"help": "Optimizer steps at the start during which only the critic learns (actor lr held at 0)."},
    )
    cliprange_value: float | None = field(
        default=0.2,
        metadata={"help": "Value-loss clipping: ½·max((V−R)², (clip(V, V_old ± c) − R)²); null turns it off."},
    )
    reward_scaling: str = field(
        default="std",
        metadata={
            "help": "Running reward scaling (Welford statistics over all processes and steps, saved in "
            "checkpoints): `none`, `std` (r / σ), or `mean_std` ((r − μ) / σ)."
        },
    )
    reward_clip: float | None = field(
        default=10.0, metadata={"help": "Clip the (scaled) sequence reward to ±reward_clip; null turns it off."}
    )
    whiten_advantages: bool = field(
        default=True,
        metadata={"help": "Whiten the advantages over the masked tokens of the global batch (variance + 1e-6)."},
    )
    advantage_clip: float | None = field(
        default=None, metadata={"help": "Clip the (whitened) advantages to ±advantage_clip; null = no clipping."}
    )
    ptx_coef: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the pretraining (language-modelling) loss mixed into the actor loss; needs the "
            "trainer's `pretrain_dataset`. 0 = off (PPO-max's default)."
        },
    )

    def __post_init__(self) -> None:
        if self.normalizer_kwargs and self.normalizer is None:
            raise ConfigError(
                "ZRLPPOTrainer has no normalizer: its advantage estimator's options go in `advantage_estimator_kwargs` "
                "(e.g. {'gamma': 1.0, 'lam': 0.95} for `gae`), not in normalizer_kwargs."
            )
        if self.normalizer is not None:
            raise ConfigError(
                f"normalizer {self.normalizer!r} is not a per-token advantage estimator: ZRLPPOTrainer takes its "
                "advantages (and its loss aggregation) from `advantage_estimator` (e.g. `gae`, `reinforce_pp`), with "
                "options in `advantage_estimator_kwargs`. Sequence-level normalizers belong to ZRLGRPOTrainer."
            )
        self.advantage_estimator_kwargs = _parse_kwargs("advantage_estimator_kwargs", self.advantage_estimator_kwargs)
        if self.critic_mode not in ("separate", "shared"):
            raise ConfigError(f"critic_mode must be 'separate' or 'shared', got {self.critic_mode!r}")
        if self.critic_mode == "shared" and self.critic_model_name_or_path:
            raise ConfigError(
                "critic_model_name_or_path needs critic_mode='separate' (a shared critic has no backbone)"
            )
        if self.reward_scaling not in REWARD_SCALING:
            raise ConfigError(f"reward_scaling must be one of {REWARD_SCALING}, got {self.reward_scaling!r}")
        for name in ("cliprange_value", "reward_clip", "advantage_clip"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive or null (off), got {value}")
        if self.critic_warmup_steps < 0 or self.ptx_coef < 0:
            raise ConfigError("critic_warmup_steps and ptx_coef must be >= 0")
        super().__post_init__()
