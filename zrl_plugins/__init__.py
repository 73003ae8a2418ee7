"""zrl: zero-RL training on TRL, with every ingredient a plugin.

Public API::

    from zrl_plugins import ZRLConfig, ZRLGRPOTrainer, load_component, hookimpl
    from zrl_plugins import ZRLPPOConfig, ZRLPPOTrainer  # actor-critic PPO / PPO-max
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .framework.errors import (
    ComponentContractError,
    DuplicateComponentError,
    PluginError,
    UnknownComponentError,
    ZRLError,
)
from .framework.hookspecs import hookimpl, hookspec
from .framework.plugins import get_plugin_manager, load_component, reset_plugin_manager
from .framework.protocols import (
    KLController,
    KLPenalty,
    LossContext,
    Normalizer,
    RolloutStrategy,
    TokenAdvantageEstimator,
    Verifier,
)

__version__ = "0.1.0"

__all__ = [
    "ComponentContractError",
    "DuplicateComponentError",
    "KLController",
    "KLPenalty",
    "LossContext",
    "Normalizer",
    "PluginError",
    "RolloutStrategy",
    "TokenAdvantageEstimator",
    "UnknownComponentError",
    "Verifier",
    "ZRLConfig",
    "ZRLError",
    "ZRLGRPOTrainer",
    "ZRLPPOConfig",
    "ZRLPPOTrainer",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "load_component",
    "reset_plugin_manager",
]

if TYPE_CHECKING:
    from .trainers.config import ZRLConfig
    from .trainers.grpo import ZRLGRPOTrainer
    from .trainers.ppo import ZRLPPOTrainer
    from .trainers.ppo_config import ZRLPPOConfig


def __getattr__(name: str) -> Any:
    # TRL and transformers take seconds to import: plugin authors and `zrl plugins` should not pay for them.
    if name == "ZRLConfig":
        from .trainers.config import ZRLConfig

        return ZRLConfig
    if name == "ZRLGRPOTrainer":
        from .trainers.grpo import ZRLGRPOTrainer

        return ZRLGRPOTrainer
    if name == "ZRLPPOConfig":
        from .trainers.ppo_config import ZRLPPOConfig

        return ZRLPPOConfig
    if name == "ZRLPPOTrainer":
        from .trainers.ppo import ZRLPPOTrainer

        return ZRLPPOTrainer
    raise AttributeError(f"module 'zrl_plugins' has no attribute {name!r}")
