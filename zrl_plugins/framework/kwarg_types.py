"""Component keyword arguments checked against the factory's type annotations before the component is built.

A config value of the wrong type (``normalizer_kwargs={"delta": "x"}``, a verifier ``timeout`` given as a string)
would otherwise be accepted by the factory and fail only inside the first training step, blamed on the plugin.
Checked: ``bool``, ``int``, ``float`` (an ``int`` is accepted), ``str``, ``None``, unions, ``Literal`` (the type of
its values; which value is allowed is the factory's to say), lists / tuples / sequences and mappings with their
element types (a JSON list is accepted for a tuple), ``Callable``, and plain classes. Anything else — no
annotation, ``Any``, a protocol that cannot be checked at run time, an annotation that cannot be resolved — is
left to the factory.
"""

from __future__ import annotations

import collections.abc
import inspect
import numbers
import sys
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError

_UNCHECKED = object()


class ComponentArgumentError(ConfigError, TypeError):
    """A component keyword argument whose type does not match the factory's annotation."""


def check_kwarg_types(
    kind: str, name: str, origin: str, factory: Callable[..., Any], kwargs: Mapping[str, Any]
) -> None:
    """Raise :class:`ComponentArgumentError` naming the component, the keyword argument, the expected and the given
    type for the first value in ``kwargs`` that does not match ``factory``'s annotation."""
    hints = _parameter_hints(factory)
    for key, value in kwargs.items():
        expected = hints.get(key, _UNCHECKED)
        if expected is _UNCHECKED or _matches(value, expected):
            continue
        raise ComponentArgumentError(
            f"{kind} {name!r} ({origin}): keyword argument {key!r} must be {_describe(expected)}, got "
            f"{type(value).__name__} {_short_repr(value)}."
        )


def _parameter_hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # one unresolvable annotation (e.g. imported under TYPE_CHECKING): resolve them one by one
        hints = {}
        namespace = vars(sys.modules.get(getattr(target, "__module__", ""), types.ModuleType("_")))
        for key, parameter in parameters.items():
            annotation = parameter.annotation
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, dict(namespace))  # the factory's own annotation text
                except Exception:
                    continue
            if annotation is not inspect.Parameter.empty:
                hints[key] = annotation
    return {k: v for k, v in hints.items() if k in parameters}


def _matches(value: Any, expected: Any) -> bool:
    if expected is Any or expected is object or isinstance(expected, typing.TypeVar):
        return True
    if expected is None or expected is type(None):
        return value is None
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(type(value) is type(a) or (isinstance(a, float) and _is_number(value)) for a in args)
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if expected is float:
        return _is_number(value)
    if origin is not None:
        return _matches_generic(value, origin, args)
    if expected in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple))
    if expected is collections.abc.Callable:
        return callable(value)
    if inspect.isclass(expected):
        try:
            return isinstance(value, expected)
        except TypeError:  # a protocol without @runtime_checkable
            return True
    return True


def _matches_generic(value: Any, origin: Any, args: tuple[Any, ...]) -> bool:
    if origin is collections.abc.Callable:
        return callable(value)
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.Iterable):
        if not isinstance(value, (list, tuple, set, frozenset) if origin in (set, frozenset) else (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
        return not args or all(_matches(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            return False
        if len(args) != 2:
            return True
        return all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if inspect.isclass(origin):
        try:
            return isinstance(value, origin)
        except TypeError:
            return True
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(expected: Any) -> str:
    if inspect.isclass(expected) and typing.get_origin(expected) is None:
        return expected.__name__
    return str(expected).replace("typing.", "").replace("NoneType", "None")


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
