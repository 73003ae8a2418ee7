"""zrl: zero-RL training on TRL, with every ingredient a plugin.

Public API::

    from zrl_plugins import ZRLConfig, ZRLGRPOTrainer, load_component, hookimpl
    from zrl_plugins import ZRLPPOConfig, ZRLPPOTrainer  # actor-critic PPO / PPO-max
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    ComponentContractError,
    DuplicateComponentError,
    PluginError,
    UnknownComponentError,
    ZRLError,
)
from .hookspecs import hookimpl, hookspec
from .plugins import get_plugin_manager, load_component, reset_plugin_manager
from .protocols import (
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
    from .config import ZRLConfig
    from .ppo_config import ZRLPPOConfig
    from .ppo_trainer import ZRLPPOTrainer
    from .trainer import ZRLGRPOTrainer


def __getattr__(name: str) -> Any:
    # TRL and transformers take seconds to import: plugin authors and `zrl plugins` should not pay for them.
    if name == "ZRLConfig":
        from .config import ZRLConfig

        return ZRLConfig
    if name == "ZRLGRPOTrainer":
        from .trainer import ZRLGRPOTrainer

        return ZRLGRPOTrainer
    if name == "ZRLPPOConfig":
        from .ppo_config import ZRLPPOConfig

        return ZRLPPOConfig
    if name == "ZRLPPOTrainer":
        from .ppo_trainer import ZRLPPOTrainer

        return ZRLPPOTrainer
    raise AttributeError(f"module 'zrl_plugins' has no attribute {name!r}")
