"""Exceptions with messages that tell the user what to do next."""

from __future__ import annotations


class ZRLError(Exception):
    """Base class of zrl's own errors."""


class PluginError(ZRLError):
    """A plugin raised inside a hook, or a component raised while the trainer called it.

    The original exception is chained (``raise ... from exc``) so its traceback is kept.
    """

    def __init__(self, plugin: str, hook: str, exc: BaseException, distribution: str | None = None):
        self.plugin = plugin
        self.hook = hook
        self.distribution = distribution
        origin = f"plugin {plugin!r}" + (f" (distribution {distribution!r})" if distribution else "")
        super().__init__(f"{origin} raised in {hook}: {type(exc).__name__}: {exc}")


class UnknownComponentError(ZRLError, KeyError):
    """A config named a component that no installed plugin registers."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DuplicateComponentError(ZRLError):
    """Two plugins registered the same component name for the same kind."""


class ComponentContractError(ZRLError):
    """A component returned something that breaks its protocol (wrong shape, NaN, wrong count)."""


class ConfigError(ZRLError, ValueError):
    """A config file or command line that cannot be used as written."""


class DataError(ZRLError, ValueError):
    """Training data that cannot be trained on (empty, missing a column, prompts that do not fit)."""
