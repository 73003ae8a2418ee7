"""The component kinds, in one table. The plugin manager (registries, protocol checks, messages), the registration
hook specifications, ``zrl plugins`` and the recipes' early name checks all read it: adding a kind is adding a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .protocols import (
    KLController,
    KLPenalty,
    Normalizer,
    PolicyLoss,
    PromptTemplate,
    RolloutCorrection,
    RolloutStrategy,
    TokenAdvantageEstimator,
    Verifier,
)


@dataclass(frozen=True)
class Kind:
    """One kind of component: how plugins register it, what it must implement, how it is selected."""

    name: str = field(metadata={"help": "The kind as code and messages name it, e.g. `normalizer`."})
    hook: str = field(metadata={"help": "The registration hook: `hook(register)` registers factories by name."})
    protocols: tuple[type, ...] = field(metadata={"help": "A built component implements one of these protocols."})
    plural: str = field(metadata={"help": "How messages name several of them."})
    help: str = field(metadata={"help": "One line on what the kind holds (CLI and docs)."})
    factory_doc: str = field(metadata={"help": "What `factory(**kwargs)` gets and returns (the hook's documentation)."})
    config_field: str | None = field(
        default=None,
        metadata={
            "help": "The trainer config field selecting it by name (a name or a list of names); `None` when another "
            "component or the recipe selects it."
        },
    )


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            name="verifier",
            hook="zrl_register_verifiers",
            protocols=(Verifier,),
            plural="verifiers",
            help="reward functions that score completions (any TRL reward function is one)",
            factory_doc="must return a :class:`zrl_plugins.sdk.Verifier`: a TRL reward function ``(prompts, "
            "completions, **columns) -> list[float | None]``. A plain TRL reward function can be registered by "
            'passing a factory that returns it, e.g. ``register("len", lambda: my_reward_fn)``.',
            config_field="verifiers",
        ),
        Kind(
            name="normalizer",
            hook="zrl_register_normalizers",
            protocols=(Normalizer,),
            plural="normalizers",
            help="sequence-level advantage formula and loss aggregation of the GRPO family",
            factory_doc="must return a :class:`zrl_plugins.sdk.Normalizer`. The trainer passes the config's "
            "``normalizer_kwargs`` plus the keyword ``max_completion_length`` when the factory accepts it.",
            config_field="normalizer",
        ),
        Kind(
            name="advantage_estimator",
            hook="zrl_register_advantage_estimators",
            protocols=(TokenAdvantageEstimator,),
            plural="advantage estimators",
            help="per-token advantage estimators of the PPO trainer (GAE with a critic, REINFORCE++ without)",
            factory_doc="must return a :class:`zrl_plugins.sdk.TokenAdvantageEstimator`. The PPO trainer passes "
            "the config's ``advantage_estimator_kwargs``.",
            config_field="advantage_estimator",
        ),
        Kind(
            name="policy_loss",
            hook="zrl_register_policy_losses",
            protocols=(PolicyLoss,),
            plural="policy losses",
            help="the per-token policy objective (PPO's clipped surrogate, CISPO, SAPO, ...)",
            factory_doc="must return a :class:`zrl_plugins.sdk.PolicyLoss`; the trainer passes the config's clip "
            "ranges, ``delta``, ``importance_sampling_level`` and loss-specific options (``sapo_*``, ``vespo_*``) "
            "to factories that accept them, unless ``policy_loss_kwargs`` sets them. The trainer selects one by "
            "name (``policy_loss``, or from TRL's ``loss_type``).",
            config_field="policy_loss",
        ),
        Kind(
            name="kl_penalty",
            hook="zrl_register_kl_penalties",
            protocols=(KLPenalty,),
            plural="KL penalties",
            help="per-token KL estimator, its placement (loss or reward) and coefficient controller",
            factory_doc="must return a :class:`zrl_plugins.sdk.KLPenalty`. The trainer passes the config's "
            "``kl_penalty_kwargs`` plus ``beta=args.beta`` when ``beta`` is not in those kwargs and the factory "
            "accepts it.",
            config_field="kl_penalty",
        ),
        Kind(
            name="kl_controller",
            hook="zrl_register_kl_controllers",
            protocols=(KLController,),
            plural="KL controllers",
            help="KL coefficient controllers, selectable by any estimator-based KL penalty",
            factory_doc="must return a :class:`zrl_plugins.sdk.KLController`; the kwargs are ``beta`` (the initial "
            'coefficient) and those of ``kl_penalty_kwargs["controller_kwargs"]`` (e.g. ``{"target_kl": 6.0, '
            '"horizon": 10000}``).',
        ),
        Kind(
            name="rollout",
            hook="zrl_register_rollouts",
            protocols=(RolloutStrategy,),
            plural="rollouts",
            help="rollout strategies: how completions and their behaviour log-probs are produced",
            factory_doc="must return a :class:`zrl_plugins.sdk.RolloutStrategy`.",
            config_field="rollout",
        ),
        Kind(
            name="rollout_correction",
            hook="zrl_register_rollout_corrections",
            protocols=(RolloutCorrection,),
            plural="rollout corrections",
            help="importance weights and rejection masks for the gap between the behaviour policy (vLLM, nested) "
            "and the trainer's pi_old",
            factory_doc="must return a :class:`zrl_plugins.sdk.RolloutCorrection`; ``kwargs`` come from "
            "``ZRLConfig.rollout_correction_kwargs``. The trainer selects one by name (``rollout_correction``, or "
            "from TRL's ``vllm_importance_sampling_*`` options).",
            config_field="rollout_correction",
        ),
        Kind(
            name="template",
            hook="zrl_register_templates",
            protocols=(PromptTemplate,),
            plural="prompt templates",
            help="prompt templates: how a problem statement becomes the model's prompt",
            factory_doc="must return a :class:`zrl_plugins.sdk.PromptTemplate`: ``template(question) -> str | "
            "list[message]``, with an ``answer_format`` attribute saying where the final answer is expected. "
            "Recipes select a template by name (``--template``).",
        ),
    )
}

COMPONENT_KINDS: tuple[str, ...] = tuple(KINDS)
