"""zrl-corrections: rollout corrections beyond TRL's modes, registered through zrl's hooks.

Each follows its paper or verl's rollout correction (definitions and defaults); formulas and references are in each
class's docstring and in docs/methods.md#rollout-correction.
"""

from __future__ import annotations

from zrl_plugins.sdk import hookimpl

from .corrections import BatchNormalizedIS, GeometricMeanMask, IcePop

__all__ = ["BatchNormalizedIS", "GeometricMeanMask", "IcePop"]


@hookimpl
def zrl_register_rollout_corrections(register):
    register("icepop", IcePop)
    register("geo_mask", GeometricMeanMask)
    register("batch_norm_is", BatchNormalizedIS)
