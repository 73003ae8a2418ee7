"""Hook specifications of the ``zrl`` pluggy project.

A plugin is any module or object with functions decorated by :data:`zrl_plugins.hookimpl` whose names match the
hooks below. Third-party plugins are found through the ``zrl`` entry-point group::

    [project.entry-points.zrl]
    my-plugin = "my_package.zrl_plugin"

The core registers its own components through these very hooks (see :mod:`zrl_plugins.builtins`), so nothing is
special-cased: a built-in and a pip-installed component are selected by name in exactly the same way.

There are two families of hooks:

* **registration hooks** (``zrl_register_*``, one per row of :data:`zrl_plugins.framework.kinds.KINDS`) are
  called once, when the plugin manager is first built. Each receives a ``register(name, factory)`` callable; the
  trainer later builds a component with ``factory(**kwargs)``, where ``kwargs`` come from the config
  (``ZRLConfig.<kind>_kwargs``).
* **observer hooks** (``zrl_on_*``) are called by the trainer while it runs, through pluggy's own hook caller: every
  implementation is called, in pluggy's order (later registrations first; ``@hookimpl(tryfirst=True)`` /
  ``trylast=True`` move one to the front or back) and ``@hookimpl(wrapper=True)`` wraps the others. They return
  nothing. An exception raised by one is re-raised as :class:`zrl_plugins.sdk.PluginError` naming the plugin and
  the hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

from .kinds import KINDS, Kind

PROJECT_NAME = "zrl"
ENTRY_POINT_GROUP = "zrl"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --------------------------------------------------------------------------------------------------------------------
# Registration hooks: one per row of the kinds table (zrl_plugins.framework.kinds), e.g. zrl_register_verifiers
# --------------------------------------------------------------------------------------------------------------------


def _registration_spec(kind: Kind) -> Callable[..., None]:
    def spec(register: Callable[[str, Callable[..., Any]], None]) -> None:
        pass

    spec.__name__ = spec.__qualname__ = kind.hook
    spec.__doc__ = f"""Register {kind.plural}: {kind.help}.

    :param register: ``register(name, factory)``. ``factory(**kwargs)`` {kind.factory_doc}

    Called once per plugin when the plugin manager is built. Registering a name that another plugin already
    registered for {kind.plural} raises :class:`zrl_plugins.sdk.DuplicateComponentError` naming both distributions.
    """
    return hookspec(spec)


for _kind in KINDS.values():
    globals()[_kind.hook] = _registration_spec(_kind)


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
        Values must load back with ``torch.load(weights_only=True)`` (tensors, numbers, strings, bytes, and
        lists/tuples/dicts/sets of them); anything else stops the save with an error naming the key. The core writes
        the dict to ``<checkpoint_dir>/zrl_state_<rank>.pt`` (one file per process) together with the
        ``state_dict()`` of every selected component.

    Called on every process after TRL has written the model, optimizer and RNG state of a checkpoint, before the
    checkpoint is marked complete: if it raises, the checkpoint stays incomplete and resume skips it
    (docs/checkpoints.md).
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
