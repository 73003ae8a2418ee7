"""Verifier calls in a worker process (``verifier_isolation="process"``), so that a deadline always frees what a
call holds.

A thread that times out is stopped by an exception raised into it, which ends a hang in Python code but not one
inside C code (a regex engine, a C extension, ``time.sleep``): that thread keeps running and holding memory
(:mod:`.verifier_guard`). Here each verifier gets one worker process; a call that misses its deadline kills the
worker — whatever it was doing — and the next call starts a new one. ``zrl-math`` has done this for its own grading;
this makes it available to any verifier.

The worker receives the verifier pickled, or, when it does not pickle, builds it again from its installed entry
point (``kind``, ``name``, keyword arguments). Rows and columns travel pickled too; the callables TRL passes
(``log_metric``, ``log_extra``) are replaced in the worker by recorders whose calls are replayed in the trainer.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import pickle
import time
from multiprocessing.connection import Connection
from typing import Any

from .errors import ConfigError, ZRLError

START_TIMEOUT_SECONDS = 120.0  # a spawned worker imports zrl (and torch) before it can answer
CALLBACKS = ("log_metric", "log_extra")


class WorkerCallError(Exception):
    """The verifier raised in its worker (its type and message, as text: exceptions need not pickle)."""


class WorkerStartError(ZRLError):
    """A verifier's worker process could not start (it must import zrl and build the verifier)."""


class WorkerDied(Exception):
    """The worker process ended in the middle of a call (a crash: segfault, out of memory)."""


def build_component(kind: str, name: str, kwargs: dict[str, Any]) -> Any:
    """The component as the trainer built it, from the worker's own plugin manager (installed entry points)."""
    from .plugins import get_plugin_manager

    return get_plugin_manager().load_component(kind, name, **kwargs)


def _serve(connection: Connection, payload: bytes) -> None:  # pragma: no cover - runs in the worker process
    spec = pickle.loads(payload)
    verifier = build_component(*spec) if isinstance(spec, tuple) else spec
    connection.send(("ready",))
    while True:
        message = connection.recv()
        if message is None:
            return
        prompts, completions, columns, callbacks = message
        recorded: list[tuple[str, tuple[Any, ...]]] = []
        for callback in callbacks:
            columns[callback] = lambda *args, _name=callback, _into=recorded: _into.append((_name, args))
        try:
            rewards = verifier(prompts=prompts, completions=completions, **columns)
            if inspect.isawaitable(rewards):
                rewards = asyncio.run(_awaited(rewards))
            if hasattr(rewards, "tolist"):
                rewards = rewards.tolist()
            connection.send(("ok", rewards, recorded))
        except BaseException as exc:
            connection.send(("error", f"{type(exc).__name__}: {exc}", recorded))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def worker_payload(verifier: Any, rebuild: tuple[str, str, dict[str, Any]] | None, name: str) -> bytes:
    """What the worker receives: the verifier pickled, else the recipe to build it again; neither is an error."""
    try:
        return pickle.dumps(verifier)
    except Exception as exc:
        if rebuild is None:
            raise ConfigError(
                f"verifier_isolation='process': verifier {name!r} does not pickle ({type(exc).__name__}: {exc}) and is "
                "not an installed component its worker could build itself. Define it at module level, or use "
                "verifier_isolation='thread'."
            ) from exc
        return pickle.dumps(rebuild)


class ProcessRunner:
    """One verifier's worker process: calls under a deadline; a missed deadline kills the worker."""

    def __init__(self, name: str, payload: bytes):
        self.name = name
        self.payload = payload
        self.process: multiprocessing.process.BaseProcess | None = None
        self.connection: Connection | None = None

    def call(self, prompts: list[Any], completions: list[Any], columns: dict[str, Any], timeout: float | None) -> Any:
        """The verifier's rewards for one call, or :class:`~zrl_plugins.framework.verifier_guard.VerifierTimeout`
        after ``timeout`` seconds (the worker is then killed), :class:`WorkerCallError` when it raised,
        :class:`WorkerDied` when it crashed."""
        from .verifier_guard import VerifierTimeout

        self._start()
        callbacks = {key: columns[key] for key in CALLBACKS if callable(columns.get(key))}
        plain = {key: value for key, value in columns.items() if key not in callbacks}
        self.connection.send((prompts, completions, plain, tuple(callbacks)))
        if not self.connection.poll(timeout):
            self.stop(kill=True)
            raise VerifierTimeout(f"no answer within {timeout}s (its worker process was killed)")
        try:
            status, value, recorded = self.connection.recv()
        except (EOFError, OSError) as exc:
            self.stop(kill=True)
            raise WorkerDied(f"the worker process of verifier {self.name!r} died during the call") from exc
        for callback, args in recorded:
            callbacks[callback](*args)
        if status == "error":
            raise WorkerCallError(value)
        return value

    def _start(self) -> None:
        if self.process is not None and self.process.is_alive():
            return
        self.stop(kill=True)
        context = multiprocessing.get_context("spawn")  # no fork of a process holding threads, CUDA or a model
        parent, child = context.Pipe()
        process = context.Process(
            target=_serve, args=(child, self.payload), daemon=True, name=f"zrl-verifier-{self.name}"
        )
        started = time.monotonic()
        process.start()
        child.close()
        self.process, self.connection = process, parent
        if not parent.poll(START_TIMEOUT_SECONDS) or parent.recv() != ("ready",):
            self.stop(kill=True)
            raise WorkerStartError(
                f"the worker process of verifier {self.name!r} did not start within "
                f"{time.monotonic() - started:.0f}s (verifier_isolation='process'); its log is above"
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self, kill: bool = False) -> None:
        """End the worker: asked to stop, or killed."""
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            try:
                self.connection.send(None)
            except (OSError, ValueError):
                self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()
        self.process, self.connection = None, None
