"""zrl-rollouts: rollout strategies registered through zrl's hooks (``nested``, ``dynamic_sampling``)."""

from zrl_plugins.sdk import hookimpl

from .dynamic_sampling import DynamicSampling
from .nested import NestedRollout, random_layers, skipped_layers

__all__ = ["DynamicSampling", "NestedRollout", "random_layers", "skipped_layers"]


@hookimpl
def zrl_register_rollouts(register):
    register("nested", NestedRollout)
    register("dynamic_sampling", DynamicSampling)
