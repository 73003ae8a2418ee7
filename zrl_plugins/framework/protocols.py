"""The component protocols. Components are plain objects: testable without a trainer.

Shapes: ``N`` is the number of completions in the *global* batch (all processes), grouped contiguously by prompt
(``group_size`` completions per prompt); ``B`` is the number of local rows and ``T`` the padded completion length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch


@runtime_checkable
class Verifier(Protocol):
    """A TRL reward function: any TRL reward function is a verifier and vice versa.

    ``__call__(prompts, completions, **columns)`` receives one prompt and one completion per row (text, or a list of
    chat messages for conversational data) and every other data set column as a keyword list (e.g. ``answer``), plus
    TRL's extras (``completion_ids``, ``trainer_state``, ``log_metric``...) and zrl's ``completion_truncated``. It
    returns one reward per row; ``None`` means "not applicable / could not score" (the row is excluded from group
    statistics when every verifier says ``None``).

    Optional attribute ``required_columns``: data set columns the verifier needs (e.g. the gold answer); the trainer
    checks them before training starts.

    Optional methods for ``zrl eval``'s maj@k (majority vote; without ``answers`` maj@k is not reported):

    - ``answers(completions) -> list[str | None]``: the final answer each completion gives, as the verifier
      extracts it (``None``: none).
    - ``equivalent(pairs) -> list[bool]``: whether each ``(answer, other)`` pair is the same answer written
      differently (``1/2`` and ``0.5``), so that they vote together.
    """

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]: ...


@dataclass(frozen=True)
class LossContext:
    """What a normalizer needs to turn per-token losses into one scalar, independent of how the batch was split.

    Attributes:
        num_items_in_batch: completion tokens (mask sum) of the whole generation batch over all processes.
        num_processes: data-parallel processes.
        gradient_accumulation_steps: micro-batches accumulated into one optimizer step (1 in evaluation).
        steps_per_generation: optimizer micro-steps one generation batch is split into.
        max_completion_length: the configured ``max_completion_length`` (L_max of Dr. GRPO).
        training: whether the loss is for training (``False`` in evaluation: no accumulation).
    """

    num_items_in_batch: float
    num_processes: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    max_completion_length: int
    training: bool = True


@runtime_checkable
class Normalizer(Protocol):
    """Advantage estimation plus loss aggregation: the two places where length and difficulty biases live.

    ``advantages(rewards, group_size)``: ``rewards`` is a 1-D float tensor over the global batch (``N`` rows, groups
    contiguous, NaN = unscorable). Returns a tensor of ``N`` advantages, one per completion, with no NaN; unscorable
    rows must get 0. (Per-token estimators such as GAE follow :class:`TokenAdvantageEstimator`.)

    ``aggregate(per_token_loss, mask, ctx)``: ``per_token_loss`` and ``mask`` are ``B x T`` (local rows). Returns the
    scalar loss to back-propagate for this micro-batch, already scaled so that summing over accumulation steps and
    averaging over processes (DDP) gives the method's loss.
    """

    def advantages(self, rewards: torch.Tensor, group_size: int) -> torch.Tensor: ...

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor: ...


@runtime_checkable
class TokenAdvantageEstimator(Protocol):
    """A per-token advantage estimator for :class:`~zrl_plugins.ZRLPPOTrainer` (GAE, REINFORCE++, ...).

    A kind of its own (``zrl_register_advantage_estimators``), selected by the PPO config's ``advantage_estimator``
    (``--advantage_estimator gae``); it takes the place of a :class:`Normalizer`'s sequence-level ``advantages``.

    Attributes:
        needs_critic: ``True`` → the trainer builds a critic and passes its values; ``False`` → no critic is loaded
            and ``values`` is ``None``.

    ``token_advantages(token_rewards, values, mask)``: ``token_rewards`` (B x T) hold the per-token rewards of this
    process's rows (the verifier score at the last completion token, minus β·KL_t when the KL penalty is placed in
    the reward); ``values`` (B x T) the critic's V(s_t) from the rollout, or ``None``; ``mask`` (B x T) is 1 on
    completion tokens (right padding is 0). Returns ``(advantages, returns)``, both B x T and 0 on padding; the
    returns are the critic's regression targets. Whitening over the global batch is the trainer's option
    (``whiten_advantages``), not the estimator's.

    ``aggregate(per_token_loss, mask, ctx)``: as for :class:`Normalizer`.
    """

    needs_critic: bool

    def token_advantages(
        self, token_rewards: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def aggregate(self, per_token_loss: torch.Tensor, mask: torch.Tensor, ctx: LossContext) -> torch.Tensor: ...


@dataclass(frozen=True)
class PolicyLossOutput:
    """What a :class:`PolicyLoss` returns for a micro-batch.

    Attributes:
        per_token_loss: ``B x T`` (or ``B x 1`` for a sequence-level loss), before masking and aggregation.
        ratio: the importance ratio π_θ / π_old the loss used (``B x T`` or ``B x 1``, before any truncation); the
            trainer uses it for the KL bias correction (``use_bias_correction_kl``) and the ``approx_kl`` metric.
        clipped_low / clipped_high: for losses that clip the ratio, where they did (bool, same shape as ``ratio``):
            logged as TRL's ``clip_ratio/*`` metrics.
        metrics: further per-token (or per-sequence) values logged as their masked mean over all processes.
    """

    per_token_loss: torch.Tensor
    ratio: torch.Tensor
    clipped_low: torch.Tensor | None = None
    clipped_high: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@runtime_checkable
class PolicyLoss(Protocol):
    """The per-token policy objective (PPO clip, CISPO, SAPO, ...), before masking and aggregation.

    ``__call__(logps, old_logps, advantages, mask, importance_sampling_ratio)``: ``logps`` are the current policy's
    log-probs of the completion tokens (``B x T``, with gradient), ``old_logps`` π_old's (no gradient),
    ``advantages`` ``B x 1`` (GRPO family) or ``B x T`` (PPO), ``mask`` ``B x T``, and
    ``importance_sampling_ratio`` the rollout's per-token or per-sequence correction π_old / π_behaviour (vLLM,
    off-policy rollouts), or ``None``. Returns a :class:`PolicyLossOutput`.

    The trainer then applies TRL's off-policy and entropy masks, multiplies by ``importance_sampling_ratio`` (unless
    the loss sets ``uses_importance_sampling_ratio = True``, i.e. it folded the ratio in itself), adds the KL term
    and hands the result to the normalizer's ``aggregate``. Hyper-parameters (clip ranges, temperatures) are factory
    arguments; the trainer passes the config's ``epsilon``, ``epsilon_high``, ``delta``, ``importance_sampling_level``
    and the ``sapo_*`` / ``vespo_*`` options to factories that accept them, unless ``policy_loss_kwargs`` sets them.
    """

    def __call__(
        self,
        logps: torch.Tensor,
        old_logps: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        importance_sampling_ratio: torch.Tensor | None,
    ) -> PolicyLossOutput: ...


@runtime_checkable
class KLController(Protocol):
    """Owns the KL coefficient β. ``update(observed_kl, n_steps)`` is called once per optimizer step with the mean
    per-token KL observed since the previous step (all processes) and the number of samples in that step.
    ``state_dict``/``load_state_dict`` make β (and any other state) travel through checkpoints."""

    @property
    def beta(self) -> float: ...

    def update(self, observed_kl: float, n_steps: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class KLPenalty(Protocol):
    """A KL penalty towards the reference policy.

    Attributes:
        placement: ``"loss"`` (β·aggregate(KL) added to the loss, GRPO style) or ``"reward"`` (β·KL_t subtracted from
            the per-token reward, PPO style).
        controller: the :class:`KLController` holding β.
        requires_reference: whether reference log-probs are needed (``False`` → no reference model is loaded).

    ``per_token(logp, ref_logp)`` returns the per-token KL estimate (``B x T``) from the policy's and the reference's
    log-probs of the sampled tokens.
    """

    placement: Literal["loss", "reward"]
    controller: KLController

    @property
    def requires_reference(self) -> bool: ...

    def per_token(self, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class RolloutStrategy(Protocol):
    """How completions and their behaviour log-probs are produced.

    Attributes:
        replaces_generation: ``False`` → TRL's own generation is used unchanged (transformers ``generate`` or TRL's
            vLLM server/colocate modes); ``True`` → ``__call__`` is installed as TRL's ``rollout_func``.
        off_policy: ``True`` when the behaviour policy differs from π_old (e.g. a layer-skipped model): the trainer
            then computes π_old log-probs itself and corrects for the behaviour log-probs it reports with the
            ``rollout_correction`` component.

    ``__call__(prompts, trainer)`` follows TRL's ``rollout_func`` contract: it receives this process's prompts (already
    repeated ``num_generations`` times by TRL's sampler) and returns a dict with ``prompt_ids``, ``completion_ids``
    (lists of token-id lists) and ``logprobs`` (per-token behaviour log-probs, or ``None``); other keys are forwarded
    to the verifiers as columns.

    Optional members (protocols below): :class:`ValidatesSetup`, :class:`ObservesMismatch` (off-policy
    strategies), :class:`GroupFilter` (DAPO's dynamic sampling), :class:`Stateful`. The correction of the loss for the
    behaviour policy is not the strategy's: it is the ``rollout_correction`` component's (:class:`RolloutCorrection`).
    """

    replaces_generation: bool
    off_policy: bool

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]: ...


@dataclass(frozen=True)
class CorrectionOutput:
    """What a :class:`RolloutCorrection` returns for this process's rows.

    Attributes:
        weights: importance weights the per-token loss is multiplied by, per token (``B x T``) or per sequence
            (``B x 1``); ones when the correction only rejects. They reach the policy loss as
            ``importance_sampling_ratio``.
        mask: rejection mask (1 = keep, 0 = reject), ``B x T`` or ``B x 1``, multiplied into the loss mask: a rejected
            token leaves the aggregation's denominator too; ``None`` rejects nothing. (A weight of 0 instead keeps the
            token in the denominator, as TRL's ``*_mask`` modes do.)
        metrics: scalars logged as ``rollout/<key>`` (min over processes for keys containing ``min``, max for
            ``max``, else the mean).
    """

    weights: torch.Tensor
    mask: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class RolloutCorrection(Protocol):
    """Corrects the loss for the gap between the behaviour policy that sampled the completions (vLLM, a layer-skipped
    model, any rollout reporting per-token log-probs) and π_old, the trainer's policy at sampling time.

    ``__call__(old_logps, behaviour_logps, mask)``: log-probs of the sampled tokens under π_old and under the
    behaviour policy (``B x T``, no gradient; a behaviour log-prob may be NaN where the engine could not score the
    token) and the completion mask (``B x T``, 1 on completion tokens). Returns a :class:`CorrectionOutput`. The
    trainer logs the mismatch statistics itself (token KL, ESS, ratio range, fraction rejected) for every
    correction.
    """

    def __call__(
        self, old_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor
    ) -> CorrectionOutput: ...


# ---------------------------------------------------------------------------------------------- optional members
# A component may implement any of these besides its kind's protocol; the trainer checks with isinstance.


@runtime_checkable
class ValidatesSetup(Protocol):
    """``validate(trainer)``: called once the trainer is built; raise to refuse a setup the component cannot serve
    (e.g. a rollout strategy that cannot work with TRL's vLLM modes)."""

    def validate(self, trainer: Any) -> None: ...


@runtime_checkable
class ObservesMismatch(Protocol):
    """For off-policy rollout strategies: ``observe_mismatch(stats)`` receives, once per rollout batch, this
    process's mismatch statistics between the behaviour policy and π_old, under their logged names
    (``rollout/behaviour_kl``, ``rollout/ess``, ...; see ``docs/methods.md#rollout-correction``), e.g. to warn when
    the behaviour model drifts too far."""

    def observe_mismatch(self, stats: dict[str, float]) -> None: ...


@runtime_checkable
class GroupFilter(Protocol):
    """A rollout strategy that filters groups (DAPO's dynamic sampling): in training, ``refill(batch, ctx)``
    receives the scored batch (:class:`zrl_plugins.sdk.ScoredBatch`) and a
    :class:`zrl_plugins.sdk.RefillContext` (``score_more`` to generate and score fresh rows — collective,
    so every process must make the same calls — ``group_rewards``, ``any_process``, the data set) and returns the
    batch to train on and scalar statistics logged as ``rollout/<key>``. ``ScoredBatch.replace_groups`` and
    ``drop_groups`` do the row surgery."""

    def refill(self, batch: Any, ctx: Any) -> tuple[Any, dict[str, float]]: ...


@runtime_checkable
class Stateful(Protocol):
    """``state_dict()`` / ``load_state_dict(state)``: the component's state is saved in checkpoints and restored on
    resume (a KL controller's β, running statistics, draw counters)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class NeedsColumns(Protocol):
    """A verifier's ``required_columns``: data set columns it reads (e.g. the gold answer), checked before training."""

    required_columns: Sequence[str]


@runtime_checkable
class PromptTemplate(Protocol):
    """Turns a problem statement into the prompt the model sees.

    ``__call__(question)`` returns a string (plain-text prompt, for base models) or a list of chat messages
    (``[{"role": "user", "content": ...}]``, rendered by the tokenizer's chat template). Attribute ``answer_format``
    (``"boxed"``, ``"answer_is"``, ``"last_number"``) tells a recipe where the final answer will be, so it can set the
    verifier's extraction to match.
    """

    answer_format: str

    def __call__(self, question: str) -> str | list[dict[str, str]]: ...
