"""Verifiers as TRL reward functions, guarded so one bad row or one hang does not stop training, and a verifier that
keeps hanging does.

* A verifier that raises on a batch is called again row by row: rows that still raise get ``None`` (not scored), a
  warning names the verifier and the row, and ``verifier/<name>/errors`` counts them. A batch that raised although
  every row then scored is logged too and counts as one error. A verifier that fails on every row of a batch is
  broken, not unlucky: that raises :class:`~zrl_plugins.sdk.PluginError`.
* A call that does not return within ``timeout`` seconds gives ``None`` for its rows and counts in
  ``verifier/<name>/timeouts``. Sync verifiers run in a thread that is stopped when its call times out (an
  exception raised into it, which ends any hang in Python code); a call stuck inside C code cannot be stopped that
  way, so while it is still running the verifier's next calls time out at once instead of starting another thread
  (at most one stuck thread per verifier). Async verifiers (``async def __call__``) run on TRL's event loop under
  ``asyncio.wait_for``, which cancels them at the deadline; a coroutine that blocks the loop without awaiting cannot
  be cancelled, so CPU-bound work belongs in a sync verifier or a worker process (as ``zrl-math`` grades).
* With ``verifier_isolation="process"`` (:mod:`.verifier_process`) every call runs in the verifier's worker
  process instead, and a missed deadline kills the worker: a hang in C code frees its resources too.
* ``max_consecutive_timeouts`` calls in a row that time out stop the run with :class:`VerifierHangError` naming the
  verifier, instead of training on batches it never scores.
* A wrong number of rewards, or a reward that is not a finite number or ``None`` — or one beyond float32's range,
  which the reward matrix would turn into ``inf`` — is a :class:`~zrl_plugins.sdk.ComponentContractError` naming
  the verifier and the row.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import numbers
import threading
from collections.abc import Callable
from typing import Any

from .errors import ComponentContractError, PluginError, ZRLError
from .verifier_process import ProcessRunner

logger = logging.getLogger(__name__)

FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max: TRL stores rewards in a float32 matrix
STOP_GRACE_SECONDS = 1.0


class VerifierTimeout(Exception):
    pass


class VerifierHangError(ZRLError):
    """A verifier timed out on too many calls in a row: training would only go on without its rewards."""


class _StopCall(BaseException):
    """Raised into a timed-out verifier thread; a BaseException so that a verifier's ``except Exception`` does not
    swallow it."""


def _raise_in_thread(thread: threading.Thread) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_StopCall))


class ThreadRunner:
    """Runs one verifier's calls in a thread under a deadline, and stops the thread when the deadline passes."""

    def __init__(self, name: str):
        self.name = name
        self.stuck: threading.Thread | None = None  # a timed-out call that could not be stopped yet

    def __call__(self, fn: Callable[[], Any], timeout: float | None) -> Any:
        """``fn()``, or :class:`VerifierTimeout` after ``timeout`` seconds (the thread is then stopped)."""
        if timeout is None:
            return fn()
        if self.stuck is not None:
            if self.stuck.is_alive():
                raise VerifierTimeout("its previous call is still running")
            self.stuck = None
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = fn()
            except _StopCall:
                pass
            except BaseException as exc:  # re-raised in the caller's thread
                outcome["error"] = exc

        thread = threading.Thread(target=run, daemon=True, name=f"zrl-verifier-{self.name}")
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            _raise_in_thread(thread)
            thread.join(STOP_GRACE_SECONDS)
            if thread.is_alive():
                self.stuck = thread
            raise VerifierTimeout(f"no answer within {timeout}s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


def _row(columns: dict[str, Any], index: int, n: int) -> dict[str, Any]:
    return {k: [v[index]] if isinstance(v, list) and len(v) == n else v for k, v in columns.items()}


def _as_number(reward: Any) -> Any:
    """A one-element tensor or array (what a reward function computed with torch or numpy holds) as its number."""
    if reward is None or isinstance(reward, numbers.Real):
        return reward
    shape = getattr(reward, "shape", None)
    if shape is not None and math.prod(shape) == 1 and callable(getattr(reward, "item", None)):
        return reward.item()
    return reward


def _described(value: Any) -> str:
    return "None" if value is None else f"a {type(value).__name__} ({str(value)[:60]!r})"


def check_rewards(name: str, origin: str, rewards: Any, n: int) -> list[float | None]:
    """The verifier's rewards as a list, or :class:`ComponentContractError` naming the verifier and the row."""
    if hasattr(rewards, "tolist") and not isinstance(rewards, str | bytes):
        rewards = rewards.tolist()  # a tensor or an array of rewards
    if rewards is None or isinstance(rewards, str | bytes | dict) or not hasattr(rewards, "__iter__"):
        raise ComponentContractError(
            f"verifier {name!r} ({origin}) returned {_described(rewards)}; it must return a list of {n} rewards, one "
            "number (or None) per completion."
        )
    rewards = [_as_number(reward) for reward in rewards]
    if len(rewards) != n:
        raise ComponentContractError(
            f"verifier {name!r} ({origin}) returned {len(rewards)} rewards for {n} completions; it must return "
            "exactly one reward (or None) per completion."
        )
    for row, reward in enumerate(rewards):
        if reward is None:
            continue
        if isinstance(reward, bool) or not isinstance(reward, numbers.Real) or not math.isfinite(reward):
            raise ComponentContractError(
                f"verifier {name!r} ({origin}) returned {reward!r} for row {row}; rewards must be finite numbers, or "
                "None when the row cannot be scored."
            )
        if abs(reward) > FLOAT32_MAX:
            raise ComponentContractError(
                f"verifier {name!r} ({origin}) returned {reward!r} for row {row}, beyond float32's range "
                f"(±{FLOAT32_MAX:.4g}) in which rewards are stored: it would become inf and stop learning. Scale the "
                "reward down."
            )
    return rewards


class _Tally:
    """What one guarded call counted: its rows, the rows that raised, the rows that timed out."""

    def __init__(self, n: int):
        self.n = n
        self.errors = 0
        self.timeouts = 0


class NamedVerifier:
    """A verifier as a TRL reward function: named after the component (TRL logs ``rewards/<name>/mean``), with the
    guards described in the module docstring."""

    def __init__(
        self,
        name: str,
        verifier: Callable[..., list[float | None]],
        origin: str,
        timeout: float | None,
        max_consecutive_timeouts: int | None = None,
        worker_payload: bytes | None = None,
    ):
        self.__name__ = name
        self.verifier = verifier
        self.origin = origin
        self.timeout = timeout
        self.max_consecutive_timeouts = max_consecutive_timeouts
        self.consecutive_timeouts = 0
        self._runner = ThreadRunner(name)
        # verifier_isolation="process": calls run in a worker process that a missed deadline kills
        self.process = ProcessRunner(name, worker_payload) if worker_payload is not None else None

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        tally = _Tally(len(completions))
        try:
            rewards = self._call(prompts, completions, columns)
        except VerifierTimeout as exc:
            rewards = self._batch_timed_out(tally, exc)
        except ComponentContractError:
            raise  # a broken contract is a bug in the verifier, not a bad row
        except Exception as batch_error:
            rewards = []
            for i in range(tally.n):
                try:
                    rewards += self._call([prompts[i]], [completions[i]], _row(columns, i, tally.n))
                except Exception as exc:
                    rewards.append(self._row_failed(tally, i, exc))
            self._after_retry(tally, batch_error)
        return self._finish(tally, rewards, columns)

    def _call(self, prompts: list[Any], completions: list[Any], columns: dict[str, Any]) -> list[float | None]:
        if self.process is not None:
            rewards = self.process.call(prompts, completions, columns, self.timeout)
        else:
            call = lambda: self.verifier(prompts=prompts, completions=completions, **columns)  # noqa: E731
            rewards = self._runner(call, self.timeout)
        return check_rewards(self.__name__, self.origin, rewards, len(completions))

    # -------------------------------------------------------------------------------------------- shared bookkeeping
    def _batch_timed_out(self, tally: _Tally, exc: VerifierTimeout) -> list[None]:
        logger.warning(
            "verifier %r (%s) did not return within %ss (%s): %d rows not scored",
            self.__name__,
            self.origin,
            self.timeout,
            exc,
            tally.n,
        )
        tally.timeouts = tally.n
        return [None] * tally.n

    def _row_failed(self, tally: _Tally, row: int, exc: Exception) -> None:
        if isinstance(exc, VerifierTimeout):
            tally.timeouts += 1
            return None
        if isinstance(exc, ComponentContractError):
            raise exc
        tally.errors += 1
        logger.warning(
            "verifier %r (%s) raised on row %d, which is not scored: %s: %s",
            self.__name__,
            self.origin,
            row,
            type(exc).__name__,
            exc,
        )
        return None

    def _after_retry(self, tally: _Tally, batch_error: Exception) -> None:
        if tally.errors + tally.timeouts == tally.n:
            raise PluginError(self.origin, f"verifier {self.__name__!r} (every row failed)", batch_error) from (
                batch_error
            )
        if tally.errors == 0 and tally.timeouts == 0:
            tally.errors = 1  # the batch call failed; row by row every row scored
            logger.warning(
                "verifier %r (%s) raised on a batch of %d rows (%s: %s); called row by row, every row scored",
                self.__name__,
                self.origin,
                tally.n,
                type(batch_error).__name__,
                batch_error,
            )

    def _finish(self, tally: _Tally, rewards: list[float | None], columns: dict[str, Any]) -> list[float | None]:
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            log_metric(f"verifier/{self.__name__}/errors", float(tally.errors))
            log_metric(f"verifier/{self.__name__}/timeouts", float(tally.timeouts))
        if tally.n and tally.timeouts == tally.n:
            self.consecutive_timeouts += 1
            limit = self.max_consecutive_timeouts
            if limit is not None and self.consecutive_timeouts >= limit:
                raise VerifierHangError(
                    f"verifier {self.__name__!r} ({self.origin}) timed out on {self.consecutive_timeouts} calls in a "
                    f"row (verifier_timeout={self.timeout}s): training would go on without its rewards. Fix the "
                    "verifier, raise verifier_timeout, or raise verifier_max_consecutive_timeouts."
                )
        else:
            self.consecutive_timeouts = 0
        return rewards


class AsyncNamedVerifier(NamedVerifier):
    """:class:`NamedVerifier` for a verifier with ``async def __call__``: TRL awaits it on its event loop, next to
    its other async reward functions, and ``asyncio.wait_for`` bounds each call."""

    async def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        tally = _Tally(len(completions))
        try:
            rewards = await self._acall(prompts, completions, columns)
        except VerifierTimeout as exc:
            rewards = self._batch_timed_out(tally, exc)
        except ComponentContractError:
            raise
        except Exception as batch_error:
            rewards = []
            for i in range(tally.n):
                try:
                    rewards += await self._acall([prompts[i]], [completions[i]], _row(columns, i, tally.n))
                except Exception as exc:
                    rewards.append(self._row_failed(tally, i, exc))
            self._after_retry(tally, batch_error)
        return self._finish(tally, rewards, columns)

    async def _acall(self, prompts: list[Any], completions: list[Any], columns: dict[str, Any]) -> list[float | None]:
        coroutine = self.verifier(prompts=prompts, completions=completions, **columns)
        try:
            rewards = await asyncio.wait_for(coroutine, self.timeout)
        except TimeoutError as exc:  # asyncio's, since Python 3.11
            raise VerifierTimeout(f"no answer within {self.timeout}s") from exc
        return check_rewards(self.__name__, self.origin, rewards, len(completions))
