"""The plugin manager: loads the built-ins and every installed ``zrl`` entry point, fills one registry per kind.

Modelled on ``llm``/``datasette``: a pluggy ``PluginManager`` for the ``zrl`` project, entry points loaded once, and
a CLI (``zrl plugins``) that lists what was found. Differences that matter for training jobs:

* a plugin whose entry point fails to import is recorded as *broken* with a warning; the others still load, so one
  bad package does not take the whole trainer down (``zrl plugins`` shows it);
* registration is attributed: every component remembers the plugin and distribution that registered it, so
  duplicate names and unknown names produce messages naming distributions.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import (
    ComponentContractError,
    DuplicateComponentError,
    PluginError,
    UnknownComponentError,
)
from .kinds import COMPONENT_KINDS, KINDS
from .kwarg_types import check_kwarg_types

logger = logging.getLogger(__name__)

BUILTIN_PLUGIN_NAME = "zrl-builtins"
CORE_DISTRIBUTION = "zrl-plugins"
SLOW_IMPORT_SECONDS = 5.0  # a plugin slower than this to import is named with its time


@dataclass(frozen=True)
class PluginInfo:
    """A loaded (or broken) plugin."""

    name: str
    distribution: str
    version: str
    broken: str | None = None  # the import error, when the entry point could not be loaded


@dataclass(frozen=True)
class ComponentEntry:
    """A registered component factory and where it came from."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    distribution: str
    version: str

    @property
    def origin(self) -> str:
        return f"{self.distribution} {self.version}".strip()


def _core_version() -> str:
    try:
        return importlib.metadata.version(CORE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class ZRLPluginManager:
    """Holds the pluggy manager, the loaded plugins and the component registries."""

    def __init__(self, load_entrypoints: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.registries: dict[str, dict[str, ComponentEntry]] = {kind: {} for kind in COMPONENT_KINDS}

        from .. import builtins

        self.register_plugin(
            builtins, name=BUILTIN_PLUGIN_NAME, distribution=CORE_DISTRIBUTION, version=_core_version()
        )
        if load_entrypoints:
            self._load_entrypoints()

    # ---------------------------------------------------------------------------------------------------- loading
    def _load_entrypoints(self) -> None:
        seen: set[str] = set()
        for ep in importlib.metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else ""
            if ep.name in seen or ep.name in self.plugins:  # the same distribution visible twice on sys.path
                continue
            seen.add(ep.name)
            try:
                started = time.perf_counter()
                plugin = ep.load()
                seconds = time.perf_counter() - started
                if seconds > SLOW_IMPORT_SECONDS:  # otherwise the wait shows as nothing at all before training
                    logger.warning(
                        "zrl plugin %r from distribution %r took %.1f s to import (loading its entry point %s)",
                        ep.name,
                        dist,
                        seconds,
                        ep.value,
                    )
                self.register_plugin(plugin, name=ep.name, distribution=dist, version=version)
            except (DuplicateComponentError, PluginError):
                raise
            except Exception as exc:  # a broken third-party package must not stop the others from loading
                message = f"{type(exc).__name__}: {exc}"
                self.plugins[ep.name] = PluginInfo(ep.name, dist, version, broken=message)
                warnings.warn(
                    f"zrl plugin {ep.name!r} from distribution {dist!r} could not be loaded and is skipped "
                    f"({message}). Fix or uninstall it (`pip uninstall {dist}`); `zrl plugins` lists it as broken.",
                    stacklevel=2,
                )

    def register_plugin(
        self, plugin: object, name: str | None = None, distribution: str = "(registered in code)", version: str = ""
    ) -> str:
        """Register a plugin object or module and run its registration hooks.

        Used for the built-ins and entry points, and available to notebooks and tests that define a plugin in code.
        Raises pluggy's ``PluginValidationError`` for a hook implementation that matches no spec or has unknown
        argument names, :class:`DuplicateComponentError` and :class:`PluginError` as documented.
        """
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self.plugins and self.plugins[name].broken is None:
            raise ValueError(f"a zrl plugin named {name!r} is already registered")
        self.pm.register(plugin, name=name)
        try:
            self.pm.check_pending()  # rejects hookimpls whose name matches no hookspec
        except pluggy.PluginValidationError:
            self.pm.unregister(plugin)
            raise
        info = PluginInfo(name, distribution, version)
        self.plugins[name] = info
        try:
            self._run_registration_hooks(plugin, info)
        except Exception:
            self._forget(plugin, info)
            raise
        return name

    def _forget(self, plugin: object, info: PluginInfo) -> None:
        self.pm.unregister(plugin)
        self.plugins.pop(info.name, None)
        for registry in self.registries.values():
            for key in [k for k, e in registry.items() if e.plugin == info.name]:
                del registry[key]

    def _run_registration_hooks(self, plugin: object, info: PluginInfo) -> None:
        for kind, hook_name in ((k.name, k.hook) for k in KINDS.values()):
            impl = getattr(plugin, hook_name, None)
            if impl is None or self.pm.parse_hookimpl_opts(plugin, hook_name) is None:
                continue

            def register(component_name: str, factory: Callable[..., Any], _kind: str = kind) -> None:
                self._add(_kind, component_name, factory, info)

            try:
                impl(register=register)
            except DuplicateComponentError:
                raise
            except Exception as exc:
                raise PluginError(info.name, hook_name, exc, info.distribution) from exc

    def _add(self, kind: str, name: str, factory: Callable[..., Any], info: PluginInfo) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"plugin {info.name!r}: component names must be non-empty strings, got {name!r}")
        if not callable(factory):
            raise TypeError(f"plugin {info.name!r}: the factory registered for {kind} {name!r} is not callable")
        registry = self.registries[kind]
        if name in registry:
            other = registry[name]
            raise DuplicateComponentError(
                f"{kind} {name!r} is registered twice: by plugin {other.plugin!r} (distribution {other.origin}) and "
                f"by plugin {info.name!r} (distribution {info.distribution} {info.version}). Uninstall one of the two "
                "distributions, or rename the component in one of them."
            )
        registry[name] = ComponentEntry(kind, name, factory, info.name, info.distribution, info.version)

    # ---------------------------------------------------------------------------------------------------- lookup
    def entry(self, kind: str, name: str) -> ComponentEntry:
        """The registry entry for ``kind``/``name``; :class:`UnknownComponentError` lists what is installed."""
        if kind not in self.registries:
            raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(COMPONENT_KINDS)}")
        registry = self.registries[kind]
        if name in registry:
            return registry[name]
        installed = ", ".join(f"{e.name} ({e.origin})" for e in sorted(registry.values(), key=lambda e: e.name))
        lines = [f"unknown {kind} {name!r}. Installed {KINDS[kind].plural}: {installed or 'none'}."]
        close = difflib.get_close_matches(name, list(registry), n=1)
        if close:
            lines.append(f"Did you mean {close[0]!r}?")
        elsewhere = [k for k, reg in self.registries.items() if k != kind and name in reg]
        if elsewhere:
            lines.append(f"{name!r} is registered as a {elsewhere[0]}, not as a {kind}.")
        broken = [p for p in self.plugins.values() if p.broken]
        if broken:
            lines.append(
                "Broken plugins that could not be loaded: " + ", ".join(f"{p.name} ({p.broken})" for p in broken)
            )
        lines.append("Install the plugin that provides it (pip install ...) and run `zrl plugins` to check.")
        raise UnknownComponentError(" ".join(lines))

    def names(self, kind: str) -> list[str]:
        return sorted(self.registries[kind])

    def load_component(self, kind: str, name: str, **kwargs: Any) -> Any:
        """Build the component ``name`` of ``kind`` with ``factory(**kwargs)`` and check its protocol.

        A factory that declares a ``plugin_manager`` parameter also receives this manager, to build the components
        it is made of by name from the same manager (a KL penalty's controller, a wrapping rollout's inner one)."""
        entry = self.entry(kind, name)
        if "plugin_manager" in kwargs:
            raise TypeError(f"{kind} {name!r}: `plugin_manager` is passed by the manager itself, not by the config")
        if accepts_keyword(entry.factory, "plugin_manager", catch_all=False):
            kwargs = {**kwargs, "plugin_manager": self}
        try:
            inspect.signature(entry.factory).bind(**kwargs)
        except TypeError as exc:
            raise TypeError(
                f"{kind} {name!r} ({entry.origin}) does not accept the arguments {sorted(kwargs)}: {exc}. "
                f"Its signature is {name}{_signature(entry.factory)}."
            ) from exc
        except ValueError:  # builtins without a signature: let the call decide
            pass
        check_kwarg_types(kind, name, entry.origin, entry.factory, kwargs)
        try:
            component = entry.factory(**kwargs)
        except Exception as exc:
            raise PluginError(entry.plugin, f"the factory of {kind} {name!r}", exc, entry.distribution) from exc
        protocols = KINDS[kind].protocols
        if not isinstance(component, protocols):
            names = " or the ".join(f"{p.__name__} protocol" for p in protocols)
            raise ComponentContractError(
                f"{kind} {name!r} ({entry.origin}) built a {type(component).__name__}, which does not implement the "
                f"{names} (see zrl_plugins.framework.protocols)."
            )
        return component

    # ---------------------------------------------------------------------------------------------------- observers
    def has_observers(self, hook_name: str) -> bool:
        """Whether any plugin implements the observer hook (lets the trainer skip preparing its arguments)."""
        return bool(getattr(self.pm.hook, hook_name).get_hookimpls())

    def call_observer(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook through pluggy's own hook caller — its order (``tryfirst`` / ``trylast``, later
        registrations first) and hook wrappers apply — and name the plugin if one raises."""
        hook = getattr(self.pm.hook, hook_name)
        try:
            hook(**kwargs)
        except Exception as exc:
            impl = _raising_impl(hook.get_hookimpls(), exc)
            name = impl.plugin_name if impl is not None else "(unknown plugin)"
            info = self.plugins.get(name)
            raise PluginError(name, hook_name, exc, info.distribution if info else None) from exc


def accepts_keyword(factory: Callable[..., Any], name: str, *, catch_all: bool) -> bool:
    """Whether ``factory`` takes the keyword ``name``: declared by name, or also through a ``**kwargs`` catch-all
    when ``catch_all`` (config defaults may go to a catch-all; the manager itself is passed only when declared)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or (catch_all and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()))


def _raising_impl(impls: list[Any], exc: BaseException) -> Any:
    """The hook implementation whose code raised ``exc``: the innermost implementation frame of the traceback (a
    wrapper the exception merely passed through is further out)."""
    codes = {getattr(impl.function, "__func__", impl.function).__code__: impl for impl in impls}
    found, frame = None, exc.__traceback__
    while frame is not None:
        found = codes.get(frame.tb_frame.f_code, found)
        frame = frame.tb_next
    return found


def _signature(obj: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


_manager: ZRLPluginManager | None = None


def get_plugin_manager() -> ZRLPluginManager:
    """The process-wide plugin manager, built (and entry points loaded) on first use."""
    global _manager
    if _manager is None:
        _manager = ZRLPluginManager()
    return _manager


def reset_plugin_manager() -> None:
    """Forget the process-wide manager (tests, or after ``pip install`` in a running notebook)."""
    global _manager
    _manager = None


def load_component(kind: str, name: str, **kwargs: Any) -> Any:
    """Build a component by name: ``load_component("normalizer", "grpo")``.

    ``kind`` is a row of :data:`zrl_plugins.framework.kinds.KINDS`. This is what the trainer uses, and what
    notebooks, tests and other tools should use.
    """
    return get_plugin_manager().load_component(kind, name, **kwargs)
