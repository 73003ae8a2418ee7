"""The core's components, registered through the same hooks as any third-party plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..framework.hookspecs import hookimpl
from .corrections import TRL_MODES, NoCorrection, seq_tis, token_tis, trl_mode
from .estimators import GAEEstimator, ReinforcePlusPlusEstimator
from .kl import FixedKLController, K3KLPenalty, NoKLPenalty
from .normalizers import GRPONormalizer
from .policy_losses import ClipLoss
from .rollouts import DefaultRollout
from .templates import TEMPLATES
from .verifiers import CountdownVerifier, LastNumberVerifier

Register = Callable[[str, Callable[..., Any]], None]


@hookimpl
def zrl_register_verifiers(register: Register) -> None:
    register("last_number", LastNumberVerifier)
    register("countdown", CountdownVerifier)


@hookimpl
def zrl_register_normalizers(register: Register) -> None:
    register("grpo", GRPONormalizer)


@hookimpl
def zrl_register_advantage_estimators(register: Register) -> None:
    register("gae", GAEEstimator)
    register("reinforce_pp", ReinforcePlusPlusEstimator)


@hookimpl
def zrl_register_policy_losses(register: Register) -> None:
    register("clip", ClipLoss)


@hookimpl
def zrl_register_kl_penalties(register: Register) -> None:
    register("k3", K3KLPenalty)
    register("none", NoKLPenalty)


@hookimpl
def zrl_register_kl_controllers(register: Register) -> None:
    register("fixed", FixedKLController)


@hookimpl
def zrl_register_rollouts(register: Register) -> None:
    register("default", DefaultRollout)


@hookimpl
def zrl_register_rollout_corrections(register: Register) -> None:
    register("none", NoCorrection)
    for mode in TRL_MODES:
        register(mode, trl_mode(mode))
    register("token_tis", token_tis)
    register("seq_tis", seq_tis)


@hookimpl
def zrl_register_templates(register: Register) -> None:
    for name, factory in TEMPLATES.items():
        register(name, factory)
