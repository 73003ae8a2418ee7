"""Verifiers as TRL reward functions, guarded so one bad row or one hang does not stop training.

* A verifier that raises on a batch is called again row by row: rows that still raise get ``None`` (not scored), a
  warning names the verifier and the row, and ``verifier/<name>/errors`` counts them. A verifier that fails on
  every row of a batch is broken, not unlucky: that raises :class:`~zrl_plugins.sdk.PluginError`.
* A call that does not return within ``timeout`` seconds gives ``None`` for its rows and counts in
  ``verifier/<name>/timeouts``; the stuck call is left behind in a daemon thread and training goes on.
* A wrong number of rewards, or a reward that is not a finite number or ``None``, is a
  :class:`~zrl_plugins.sdk.ComponentContractError` naming the verifier.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from collections.abc import Callable
from typing import Any

from .errors import ComponentContractError, PluginError

logger = logging.getLogger(__name__)


class VerifierTimeout(Exception):
    pass


def call_with_timeout(fn: Callable[[], Any], timeout: float | None, name: str) -> Any:
    """``fn()``, or :class:`VerifierTimeout` after ``timeout`` seconds (the call keeps running in a daemon thread)."""
    if timeout is None:
        return fn()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name=f"zrl-verifier-{name}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise VerifierTimeout
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _row(columns: dict[str, Any], index: int, n: int) -> dict[str, Any]:
    return {k: [v[index]] if isinstance(v, list) and len(v) == n else v for k, v in columns.items()}


class NamedVerifier:
    """A verifier as a TRL reward function: named after the component (TRL logs ``rewards/<name>/mean``), with the
    guards described in the module docstring."""

    def __init__(self, name: str, verifier: Callable[..., list[float | None]], origin: str, timeout: float | None):
        self.__name__ = name
        self.verifier = verifier
        self.origin = origin
        self.timeout = timeout

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        errors = timeouts = 0
        try:
            rewards = self._call(prompts, completions, columns)
        except VerifierTimeout:
            logger.warning("verifier %r (%s) did not return within %ss: %d rows not scored", self.__name__,
                           self.origin, self.timeout, n)  # fmt: skip
            rewards, timeouts = [None] * n, n
        except ComponentContractError:
            raise  # a broken contract is a bug in the verifier, not a bad row
        except Exception as batch_error:
            rewards = []
            for i in range(n):
                try:
                    rewards += self._call([prompts[i]], [completions[i]], _row(columns, i, n))
                except VerifierTimeout:
                    rewards.append(None)
                    timeouts += 1
                except ComponentContractError:
                    raise
                except Exception as exc:
                    rewards.append(None)
                    errors += 1
                    logger.warning("verifier %r (%s) raised on row %d, which is not scored: %s: %s", self.__name__,
                                   self.origin, i, type(exc).__name__, exc)  # fmt: skip
            if errors + timeouts == n:
                raise PluginError(self.origin, f"verifier {self.__name__!r} (every row failed)", batch_error) from (
                    batch_error
                )
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            log_metric(f"verifier/{self.__name__}/errors", float(errors))
            log_metric(f"verifier/{self.__name__}/timeouts", float(timeouts))
        return rewards

    def _call(self, prompts: list[Any], completions: list[Any], columns: dict[str, Any]) -> list[float | None]:
        rewards = call_with_timeout(
            lambda: self.verifier(prompts=prompts, completions=completions, **columns), self.timeout, self.__name__
        )
        rewards = list(rewards)
        if len(rewards) != len(completions):
            raise ComponentContractError(
                f"verifier {self.__name__!r} ({self.origin}) returned {len(rewards)} rewards for {len(completions)} "
                "completions; it must return exactly one reward (or None) per completion."
            )
        for row, reward in enumerate(rewards):
            if reward is not None and (not isinstance(reward, numbers.Real) or not math.isfinite(reward)):
                raise ComponentContractError(
                    f"verifier {self.__name__!r} ({self.origin}) returned {reward!r} for row {row}; rewards must be "
                    "finite numbers, or None when the row cannot be scored."
                )
        return rewards
