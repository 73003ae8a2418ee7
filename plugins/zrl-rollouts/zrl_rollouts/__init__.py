"""zrl-rollouts: rollout strategies registered through zrl's hooks (``nested``)."""

from zrl_plugins import hookimpl

from .nested import NestedRollout, choose_layers, importance_weights, skipped_layers

__all__ = ["NestedRollout", "choose_layers", "importance_weights", "skipped_layers"]


@hookimpl
def zrl_register_rollouts(register):
    register("nested", NestedRollout)
