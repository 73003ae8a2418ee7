"""zrl-losses: policy losses beyond PPO's clipped surrogate, registered through zrl's hooks.

Each reproduces TRL's ``loss_type`` of the same name (the aggregation is the normalizer's; ``ZRLConfig(loss_type=...)``
selects both). Formulas and references are in each class's docstring and in docs/methods.md#policy-losses.
"""

from __future__ import annotations

from zrl_plugins.sdk import hookimpl

from .losses import CISPO, LUSPO, SAPO, VESPO, gamma_weights

__all__ = ["CISPO", "LUSPO", "SAPO", "VESPO", "gamma_weights"]


@hookimpl
def zrl_register_policy_losses(register):
    register("cispo", CISPO)
    register("sapo", SAPO)
    register("luspo", LUSPO)
    register("vespo", VESPO)
