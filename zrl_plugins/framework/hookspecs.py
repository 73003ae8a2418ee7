"""Hook specifications of the ``zrl`` pluggy project.

A plugin is any module or object with functions decorated by :data:`zrl_plugins.hookimpl` whose names match the
hooks below. Third-party plugins are found through the ``zrl`` entry-point group::

    [project.entry-points.zrl]
    my-plugin = "my_package.zrl_plugin"

The core registers its own components through these very hooks (see :mod:`zrl_plugins.builtins`), so nothing is
special-cased: a built-in and a pip-installed component are selected by name in exactly the same way.

There are two families of hooks:

* **registration hooks** (``zrl_register_*``) are called once, when the plugin manager is first built. Each receives
  a ``register(name, factory)`` callable; the trainer later builds a component with ``factory(**kwargs)``, where
  ``kwargs`` come from the config (``ZRLConfig.<kind>_kwargs``).
* **observer hooks** (``zrl_on_*``) are called by the trainer while it runs, through pluggy's own hook caller: every
  implementation is called, in pluggy's order (later registrations first; ``@hookimpl(tryfirst=True)`` /
  ``trylast=True`` move one to the front or back) and ``@hookimpl(wrapper=True)`` wraps the others. They return
  nothing. An exception raised by one is re-raised as :class:`zrl_plugins.sdk.PluginError` naming the plugin and
  the hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable

PROJECT_NAME = "zrl"
ENTRY_POINT_GROUP = "zrl"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------------------------------------------------
# Registration hooks
# --------------------------------------------------------------------------------------------------------------------


@hookspec
def zrl_register_verifiers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register reward verifiers.

    :param register: ``register(name, factory)``. ``factory(**kwargs)`` must return a
        :class:`zrl_plugins.sdk.Verifier`: a TRL reward function
        ``(prompts, completions, **columns) -> list[float | None]``. A plain TRL reward function can be registered
        by passing a factory that returns it, e.g. ``register("len", lambda: my_reward_fn)``.

    Called once per plugin when the plugin manager is built. Registering a name that another plugin already
    registered for verifiers raises :class:`zrl_plugins.sdk.DuplicateComponentError` naming both distributions.
    """


@hookspec
def zrl_register_normalizers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register advantage normalizers (advantage formula + loss aggregation).

    :param register: ``register(name, factory)``. ``factory(**kwargs)`` must return a
        :class:`zrl_plugins.sdk.Normalizer`. The trainer passes the config's ``normalizer_kwargs`` plus the
        keyword ``max_completion_length`` when the factory accepts it.

    Called once per plugin when the plugin manager is built.
    """


@hookspec
def zrl_register_policy_losses(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register policy losses (the per-token policy objective: PPO's clipped surrogate, CISPO, SAPO, ...).

    :param register: ``register(name, factory)``. ``factory(**kwargs)`` must return a
        :class:`zrl_plugins.sdk.PolicyLoss`; the trainer passes the config's clip ranges, ``delta``,
        ``importance_sampling_level`` and loss-specific options (``sapo_*``, ``vespo_*``) to factories that accept
        them, unless ``policy_loss_kwargs`` sets them.

    Called once per plugin when the plugin manager is built. The trainer selects one by name (``policy_loss``, or
    from TRL's ``loss_type``).
    """


@hookspec
def zrl_register_kl_penalties(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register KL penalties (per-token estimator, placement and coefficient controller).

    :param register: ``register(name, factory)``. ``factory(**kwargs)`` must return a
        :class:`zrl_plugins.sdk.KLPenalty`. The trainer passes the config's ``kl_penalty_kwargs`` plus
        ``beta=args.beta`` when ``beta`` is not in those kwargs and the factory accepts it.

    Called once per plugin when the plugin manager is built.
    """


@hookspec
def zrl_register_kl_controllers(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register KL coefficient controllers, selectable by any estimator-based KL penalty.

    :param register: ``register(name, factory)``. ``factory(beta=..., **kwargs)`` must return a
        :class:`zrl_plugins.sdk.KLController`; ``beta`` is the initial coefficient and ``kwargs`` come from
        ``kl_penalty_kwargs["controller_kwargs"]`` (e.g. ``{"target_kl": 6.0, "horizon": 10000}``).

    Called once per plugin when the plugin manager is built.
    """


@hookspec
def zrl_register_templates(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register prompt templates (how a problem statement becomes the model's prompt).

    :param register: ``register(name, factory)``. ``factory(**kwargs)`` must return a
        :class:`zrl_plugins.sdk.PromptTemplate`: ``template(question) -> str | list[message]``, with an
        ``answer_format`` attribute saying where the final answer is expected.

    Called once per plugin when the plugin manager is built. Recipes select a template by name (``--template``).
    """


@hookspec
def zrl_register_rollouts(register: Callable[[str, Callable[..., Any]], None]) -> None:
    """Register rollout strategies (how completions and their behaviour log-probs are produced).

    :param register: ``register(name, factory)``. ``factory(**kwargs)`` must return a
        :class:`zrl_plugins.sdk.RolloutStrategy`.

    Called once per plugin when the plugin manager is built.
    """


# --------------------------------------------------------------------------------------------------------------------
# Observer hooks
# --------------------------------------------------------------------------------------------------------------------


@hookspec
def zrl_on_rollout_batch(trainer: Any, batch: dict[str, Any]) -> None:
    """See each scored rollout batch.

    :param trainer: the running :class:`zrl_plugins.ZRLGRPOTrainer` (or a subclass).
    :param batch: a read-only view of the batch on this process: ``prompts`` and ``completions`` (text or
        messages, local rows), ``rewards`` (1-D tensor over the *global* batch, NaN = unscorable),
        ``rewards_per_func`` (global, one column per reward function), ``reward_func_names``, ``advantages``
        (local rows), ``completion_ids`` and ``completion_mask`` (local, padded), ``mode`` (``"train"``/``"eval"``)
        and ``step`` (the global optimizer step).

    Called on every process after rewards and advantages of a generation batch are computed, before the batch is
    used for any optimizer step. Use it to monitor; to report numbers, keep them and add them to the metrics in
    :func:`zrl_on_log`. Do not modify the tensors.
    """


@hookspec
def zrl_on_log(trainer: Any, logs: dict[str, float]) -> None:
    """See (and extend) each metrics dict before it reaches the loggers.

    :param trainer: the running trainer.
    :param logs: the metrics TRL is about to log. A plugin may add keys; it should not remove any.

    Called on every process each time the trainer logs (every ``logging_steps`` and at evaluation).
    """


@hookspec
def zrl_on_save_checkpoint(trainer: Any, checkpoint_dir: str, state: dict[str, Any]) -> None:
    """Persist plugin state in a checkpoint.

    :param trainer: the running trainer.
    :param checkpoint_dir: the ``checkpoint-<step>`` folder being written.
    :param state: a dict the plugin adds its entries to, under a key of its own (e.g. its distribution name).
        Values must be picklable by :func:`torch.save` (tensors, numbers, lists, dicts). The core writes the dict to
        ``<checkpoint_dir>/zrl_state_<rank>.pt`` (one file per process) together with the ``state_dict()`` of every
        selected component.

    Called on every process after TRL has written the model, optimizer and RNG state of a checkpoint.
    """


@hookspec
def zrl_on_load_checkpoint(trainer: Any, checkpoint_dir: str, state: dict[str, Any]) -> None:
    """Restore plugin state from a checkpoint when training resumes.

    :param trainer: the trainer about to resume.
    :param checkpoint_dir: the checkpoint folder being resumed from.
    :param state: the dict that :func:`zrl_on_save_checkpoint` implementations filled.

    Called on every process when ``trainer.train(resume_from_checkpoint=...)`` loads optimizer and scheduler state,
    after the selected components have had their own ``load_state_dict`` called.
    """
