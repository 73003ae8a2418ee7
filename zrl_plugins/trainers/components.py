"""The components a trainer runs with: built once from its config, checked before TRL loads a model, then read-only.

The GRPO family takes its advantages from a ``normalizer``; the PPO trainer from an ``advantage_estimator``. Either
one also aggregates the per-token loss, so both sit in the same slot (:attr:`Components.advantages`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from trl.trainer.utils import get_callable_name, is_async_callable

from ..framework.errors import ComponentContractError, ConfigError, PluginError
from ..framework.plugins import ZRLPluginManager, accepts_keyword
from ..framework.protocols import Stateful
from ..framework.verifier_guard import AsyncNamedVerifier, NamedVerifier
from ..framework.verifier_process import worker_payload
from .numerics import NumericalInstabilityError


@dataclass(frozen=True)
class Selected:
    """A built component and the kind and name it was selected by (what error messages name)."""

    kind: str
    name: str
    component: Any


@dataclass(frozen=True)
class Components:
    """Everything a trainer's config selects by name, built."""

    advantages: Selected  # the normalizer (GRPO family) or the advantage estimator (PPO); also aggregates the loss
    policy_loss: Selected
    kl_penalty: Selected
    rollout: Selected
    rollout_correction: Selected
    verifiers: tuple[Callable[..., Any], ...]


def policy_loss_defaults(args: Any) -> dict[str, Any]:
    """The config's options a policy loss factory gets unless ``policy_loss_kwargs`` sets them (TRL's meaning:
    ``epsilon_high`` unset = ``epsilon``)."""
    defaults: dict[str, Any] = {
        "epsilon_low": args.epsilon,
        "epsilon_high": args.epsilon if args.epsilon_high is None else args.epsilon_high,
        "delta": args.delta,
        "sapo_temperature_pos": args.sapo_temperature_pos,
        "sapo_temperature_neg": args.sapo_temperature_neg,
        "vespo_k_pos": args.vespo_k_pos,
        "vespo_lambda_pos": args.vespo_lambda_pos,
        "vespo_k_neg": args.vespo_k_neg,
        "vespo_lambda_neg": args.vespo_lambda_neg,
    }
    if args.importance_sampling_level is not None:
        defaults["importance_sampling_level"] = args.importance_sampling_level
    return defaults


def build(pm: ZRLPluginManager, kind: str, name: str, kwargs: dict[str, Any], **defaults: Any) -> Selected:
    """``kind``/``name`` built with ``kwargs``, plus each default its factory accepts and ``kwargs`` does not set."""
    factory = pm.entry(kind, name).factory
    merged = dict(kwargs)
    for key, value in defaults.items():
        if key not in merged and accepts_keyword(factory, key, catch_all=True):
            merged[key] = value
    return Selected(kind, name, pm.load_component(kind, name, **merged))


def verifier(pm: ZRLPluginManager, name: str, kwargs: dict[str, Any], args: Any) -> Callable[..., Any]:
    """The verifier ``name`` as a TRL reward function named after it (errors, timeouts and a run of timeouts
    attributed to it; ``args``: the config's ``verifier_timeout`` and ``verifier_max_consecutive_timeouts``)."""
    built = pm.load_component("verifier", name, **kwargs)
    entry = pm.entry("verifier", name)
    if isinstance(built, torch.nn.Module):
        return built  # TRL runs it itself, as a reward model
    guard = AsyncNamedVerifier if is_async_callable(built) else NamedVerifier  # TRL awaits async ones together
    origin = entry.origin if entry.origin.startswith("(") else f"({entry.origin})"
    limits = (args.verifier_timeout, args.verifier_max_consecutive_timeouts)
    payload = isolated(built, name, args, rebuild=("verifier", name, kwargs))
    if payload is not None:
        guard = NamedVerifier  # the worker process awaits an async verifier itself
    wrapped = guard(name, built, f"{entry.plugin} {origin}", *limits, payload)
    if get_callable_name(wrapped) != name:  # pragma: no cover - guards TRL's naming rule
        raise RuntimeError("TRL would not name the verifier after its component")
    return wrapped


def normalizer(pm: ZRLPluginManager, args: Any) -> Selected:
    """The GRPO family's normalizer; a PPO advantage estimator named here is refused with where it belongs."""
    name = args.normalizer
    if name not in pm.registries["normalizer"] and name in pm.registries["advantage_estimator"]:
        raise ConfigError(
            f"normalizer {name!r} has no sequence-level `advantages(rewards, group_size)`: it is a per-token "
            f"advantage estimator for ZRLPPOTrainer (zrl_plugins.ZRLPPOTrainer, advantage_estimator={name!r}). "
            f"Normalizers: {', '.join(pm.names('normalizer'))}."
        )
    return build(pm, "normalizer", name, args.normalizer_kwargs, max_completion_length=args.max_completion_length)


def advantage_estimator(pm: ZRLPluginManager, args: Any) -> Selected:
    """PPO's per-token advantage estimator, which must say whether it needs a critic."""
    name = args.advantage_estimator
    selected = build(pm, "advantage_estimator", name, args.advantage_estimator_kwargs)
    if not isinstance(getattr(selected.component, "needs_critic", None), bool):
        raise ConfigError(
            f"advantage_estimator {name!r} must say whether it needs a critic (`needs_critic = True/False`)"
        )
    return selected


def rollout_correction(pm: ZRLPluginManager, args: Any, rollout: Selected) -> Selected:
    """The correction for the behaviour policy's log-probs; unset outside vLLM (``correction_options``): truncated
    token IS for an off-policy rollout strategy, else none."""
    name = args.rollout_correction or ("token_tis" if rollout.component.off_policy else "none")
    return build(pm, "rollout_correction", name, args.rollout_correction_kwargs)


def build_components(
    pm: ZRLPluginManager,
    args: Any,
    advantages: Callable[[ZRLPluginManager, Any], Selected],
    kl_defaults: dict[str, Any],
) -> Components:
    """Build every component the config selects (``advantages``: :func:`normalizer` or :func:`advantage_estimator`)."""
    rollout = build(pm, "rollout", args.rollout, args.rollout_kwargs)
    return Components(
        advantages=advantages(pm, args),
        policy_loss=build(pm, "policy_loss", args.policy_loss, args.policy_loss_kwargs, **policy_loss_defaults(args)),
        kl_penalty=build(pm, "kl_penalty", args.kl_penalty, args.kl_penalty_kwargs, **kl_defaults),
        rollout=rollout,
        rollout_correction=rollout_correction(pm, args, rollout),
        verifiers=tuple(verifier(pm, name, args.verifier_kwargs.get(name, {}), args) for name in args.verifiers),
    )


def call_plugin(pm: ZRLPluginManager, selected: Selected, method: str, *args: Any) -> Any:
    """Call ``method`` of a component; an exception it raises becomes a :class:`PluginError` naming the plugin, the
    component and the method (zrl's own contract and numerics errors pass through)."""
    function = getattr(selected.component, method)
    try:
        return function(*args)
    except (ComponentContractError, NumericalInstabilityError, PluginError):
        raise
    except Exception as exc:
        entry = pm.entry(selected.kind, selected.name)
        raise PluginError(entry.plugin, f"{selected.kind} {selected.name!r}.{method}", exc, entry.distribution) from exc


def isolated(verifier: Any, name: str, args: Any, rebuild: tuple[str, str, dict[str, Any]] | None) -> bytes | None:
    """What a verifier's worker process receives under ``verifier_isolation="process"`` (else ``None``)."""
    if args.verifier_isolation != "process":
        return None
    if isinstance(verifier, Stateful):
        raise ConfigError(
            f"verifier_isolation='process': verifier {name!r} keeps state (state_dict / load_state_dict) that "
            "checkpoints save from the trainer's process, which its worker's copy would leave behind. Use "
            "verifier_isolation='thread' for it."
        )
    return worker_payload(verifier, rebuild, name)


def guarded_reward_func(func: Any, args: Any) -> Any:
    """A reward function passed TRL's way under the verifier's contract (:mod:`~zrl_plugins.framework.verifier_guard`:
    deadline, row-by-row retries, checked values, errors naming it), named as TRL names it. Reward models (a module,
    or a model id TRL loads) are TRL's to run."""
    if isinstance(func, str | torch.nn.Module | NamedVerifier):
        return func
    name = get_callable_name(func)
    payload = isolated(func, name, args, rebuild=None)
    guard = AsyncNamedVerifier if is_async_callable(func) and payload is None else NamedVerifier
    limits = (args.verifier_timeout, args.verifier_max_consecutive_timeouts)
    return guard(name, func, "a reward function passed to the trainer", *limits, payload)


def trl_reward_funcs(
    pm: ZRLPluginManager, components: Components, reward_funcs: Any, environments: bool, args: Any
) -> list[Callable[..., Any]]:
    """TRL's ``reward_funcs``: the verifiers selected by name, then the caller's, every one under the same guard; at
    least one unless environments give the rewards."""
    if reward_funcs is None:
        reward_funcs = []
    elif not isinstance(reward_funcs, list):
        reward_funcs = [reward_funcs]
    reward_funcs = [*components.verifiers, *(guarded_reward_func(func, args) for func in reward_funcs)]
    if not reward_funcs and not environments:
        raise ValueError(
            "no reward: select verifiers by name (ZRLConfig(verifiers=[...]), `--verifiers` on the CLI; installed: "
            f"{', '.join(pm.names('verifier'))}) or pass reward_funcs to the trainer."
        )
    return reward_funcs


def trl_rollout_func(components: Components, rollout_func: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """TRL's ``rollout_func``: the rollout strategy when it replaces generation (then the caller may pass none)."""
    if not components.rollout.component.replaces_generation:
        return rollout_func
    if rollout_func is not None:
        raise ValueError(
            f"rollout strategy {components.rollout.name!r} replaces generation, and a rollout_func was passed as "
            "well; use one of the two."
        )
    return components.rollout.component
