"""zrl-kl: KL estimators and the adaptive controller, registered through zrl's hooks.

Every estimator takes the arguments of :class:`zrl_plugins.builtins.kl.EstimatorKLPenalty`:
``beta``, ``placement`` (``loss`` / ``reward``), ``controller`` (``fixed`` / ``adaptive``) and ``controller_kwargs``.
"""

from __future__ import annotations

from zrl_plugins.sdk import EstimatorKLPenalty, hookimpl

from .controllers import AdaptiveKLController
from .estimators import ESTIMATORS, abs_kl, k1, k2, low_var_kl

__all__ = ["ESTIMATORS", "AdaptiveKLController", "abs_kl", "k1", "k2", "low_var_kl"]


def _penalty_factory(estimator):
    def factory(beta=0.0, placement="loss", controller="fixed", controller_kwargs=None, plugin_manager=None):
        return EstimatorKLPenalty(estimator, beta, placement, controller, controller_kwargs, plugin_manager)

    factory.__doc__ = f"KL penalty with the {estimator.__name__} estimator: {estimator.__doc__}"
    return factory


@hookimpl
def zrl_register_kl_penalties(register):
    for name, estimator in ESTIMATORS.items():
        register(name, _penalty_factory(estimator))


@hookimpl
def zrl_register_kl_controllers(register):
    register("adaptive", AdaptiveKLController)
