"""The plugin SDK: everything a plugin distribution needs from zrl, in one import.

    from zrl_plugins.sdk import hookimpl, LossContext, group_view, aggregate, PolicyLossOutput, ...

Plugins import from here rather than from zrl's internals (``zrl_plugins.framework``, ``zrl_plugins.builtins``), which
may move between versions; the names below are the supported surface. Importing it does not import TRL.

A rollout plugin reaches the running trainer through functions, never through ``trainer._*`` (a test scans every
plugin for that): :func:`generate_with_trl` (TRL's own generation), :func:`tokenize_prompts` and
:func:`left_padded` / :func:`right_padded` (TRL's prompt rendering and batching), :func:`token_logps` (log-probs of
given tokens under the policy, optionally with decoder layers skipped, :func:`skipped_layers`) and
:func:`log_metric`.
"""

from __future__ import annotations

from .builtins.kl import EstimatorKLPenalty, FixedKLController, k3
from .builtins.policy_losses import ClipLoss, Level, log_importance_weights
from .builtins.verifiers import completion_text, last_number
from .framework.errors import (
    ComponentContractError,
    ConfigError,
    DataError,
    DuplicateComponentError,
    PluginError,
    UnknownComponentError,
    ZRLError,
)
from .framework.group_filter import uninformative_groups
from .framework.hookspecs import hookimpl, hookspec
from .framework.ops import (
    AGGREGATIONS,
    aggregate,
    batch_token_mean_aggregate,
    check_aggregation,
    constant_length_aggregate,
    group_view,
    nanstd,
    sequence_mean_aggregate,
    sequence_sum_aggregate,
    token_mean_aggregate,
)
from .framework.plugins import get_plugin_manager, load_component
from .framework.protocols import (
    CorrectionOutput,
    GroupFilter,
    KLController,
    KLPenalty,
    LossContext,
    NeedsColumns,
    Normalizer,
    ObservesMismatch,
    PolicyLoss,
    PolicyLossOutput,
    PromptTemplate,
    RolloutCorrection,
    RolloutStrategy,
    Stateful,
    TokenAdvantageEstimator,
    ValidatesSetup,
    Verifier,
)
from .framework.rollout_correction import SAFETY_BOUND, sequence_log_ratio, token_log_ratio
from .framework.scored_batch import RefillContext, ScoredBatch
from .framework.trainer_api import (
    decoder_layers_owner,
    generate_with_trl,
    left_padded,
    log_metric,
    mode_of,
    right_padded,
    skipped_layers,
    token_logps,
    tokenize_prompts,
)

__all__ = [
    "AGGREGATIONS",
    "SAFETY_BOUND",
    "ClipLoss",
    "ComponentContractError",
    "ConfigError",
    "CorrectionOutput",
    "DataError",
    "DuplicateComponentError",
    "EstimatorKLPenalty",
    "FixedKLController",
    "GroupFilter",
    "KLController",
    "KLPenalty",
    "Level",
    "LossContext",
    "NeedsColumns",
    "Normalizer",
    "ObservesMismatch",
    "PluginError",
    "PolicyLoss",
    "PolicyLossOutput",
    "PromptTemplate",
    "RefillContext",
    "RolloutCorrection",
    "RolloutStrategy",
    "ScoredBatch",
    "Stateful",
    "TokenAdvantageEstimator",
    "UnknownComponentError",
    "ValidatesSetup",
    "Verifier",
    "ZRLError",
    "aggregate",
    "batch_token_mean_aggregate",
    "check_aggregation",
    "completion_text",
    "constant_length_aggregate",
    "decoder_layers_owner",
    "generate_with_trl",
    "get_plugin_manager",
    "group_view",
    "hookimpl",
    "hookspec",
    "k3",
    "last_number",
    "left_padded",
    "load_component",
    "log_importance_weights",
    "log_metric",
    "mode_of",
    "nanstd",
    "right_padded",
    "sequence_log_ratio",
    "sequence_mean_aggregate",
    "sequence_sum_aggregate",
    "skipped_layers",
    "token_log_ratio",
    "token_logps",
    "token_mean_aggregate",
    "tokenize_prompts",
    "uninformative_groups",
]
