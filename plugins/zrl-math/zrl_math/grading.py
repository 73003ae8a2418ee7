"""Mathematical equivalence with math-verify, made safe for training loops.

math-verify bounds its own work with ``signal.alarm``, which only works on a process's main thread. Grading here
runs in worker processes (each grades on its own main thread, under a ``setitimer`` deadline per item), and the
parent additionally gives every chunk of items a wall-clock deadline: a worker stuck where no signal reaches it is
killed and its pool restarted. Whatever happens, every item gets an outcome and training goes on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from typing import Literal

# math-verify warns on every call that its own timeout is off: here the deadline is ours (see `grade`).
logging.getLogger("math_verify").setLevel(logging.ERROR)

Outcome = Literal["correct", "wrong", "no_answer", "unparsable_gold", "timeout", "error"]


class _ItemTimeout(Exception):
    pass


def _as_latex(text: str) -> str:
    """math-verify finds answers inside math delimiters; a bare ``\\frac{1}{2}`` or ``x=3`` is wrapped in ``$...$``."""
    text = text.strip()
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return text
    return f"${text}$"


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    return parse(_as_latex(gold), parsing_timeout=None)


def _grade_unbounded(answer: str | None, gold: str) -> Outcome:
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    if not any(not isinstance(x, str) for x in gold_parsed):  # math-verify keeps the raw string when it fails
        return "unparsable_gold"
    if answer is None:
        return "no_answer"
    predicted = parse(_as_latex(answer), parsing_timeout=None)
    if not predicted:
        return "wrong"
    return "correct" if verify(gold_parsed, predicted, timeout_seconds=None) else "wrong"


def _on_alarm(signum, frame):  # pragma: no cover - runs inside the signal handler
    raise _ItemTimeout


def grade(answer: str | None, gold: str, timeout: float) -> Outcome:
    """Grade one item on the calling thread. On a main thread the item gets ``timeout`` seconds (SIGALRM)."""
    if gold is None or (isinstance(gold, float) and math.isnan(gold)):
        return "unparsable_gold"
    gold = str(gold)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGALRM, _on_alarm) if on_main_thread else None
    if on_main_thread:
        signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return _grade_unbounded(answer, gold)
    except _ItemTimeout:
        return "timeout"
    except RecursionError:  # sympy on deeply nested input
        return "wrong" if _parse_gold_safely(gold) else "unparsable_gold"
    except Exception:
        return "error"
    finally:
        if on_main_thread:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _parse_gold_safely(gold: str) -> bool:
    try:
        return any(not isinstance(x, str) for x in _parse_gold(gold))
    except Exception:
        return False


def grade_chunk(items: Sequence[tuple[str | None, str]], timeout: float) -> list[Outcome]:
    """Worker entry point: grade a chunk of ``(answer, gold)`` items."""
    return [grade(answer, gold, timeout) for answer, gold in items]


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    os.environ.setdefault("OMP_NUM_THREADS", "1")


class Grader:
    """Grades ``(answer, gold)`` pairs in parallel worker processes with per-item time limits.

    Args:
        timeout: seconds per item (the issue's default: 5).
        num_workers: worker processes; ``None`` = CPU count; ``0`` = grade in this process (with the per-item limit
            when called on the main thread; from another thread a one-worker pool is used instead, since signals
            cannot bound the work there).
        chunk_size: items sent to a worker at a time.
        grace: seconds a chunk may take beyond ``timeout x chunk_size`` before its worker is deemed hung.
        chunk_function: the function run in the workers (module level, picklable); tests inject misbehaving ones.
    """

    def __init__(
        self,
        timeout: float = 5.0,
        num_workers: int | None = None,
        chunk_size: int = 16,
        grace: float = 10.0,
        chunk_function=grade_chunk,
    ):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = float(timeout)
        self.num_workers = (os.cpu_count() or 1) if num_workers is None else int(num_workers)
        self.chunk_size = max(1, int(chunk_size))
        self.grace = float(grace)
        self.chunk_function = chunk_function
        self._pool = None
        self._pool_size = 0
        self.restarts = 0

    def grade_many(self, items: Sequence[tuple[str | None, str]]) -> list[Outcome]:
        items = list(items)
        if not items:
            return []
        if self.num_workers == 0 and threading.current_thread() is threading.main_thread():
            return self.chunk_function(items, self.timeout)
        return self._grade_in_pool(items, max(1, self.num_workers))

    def _grade_in_pool(self, items: list[tuple[str | None, str]], workers: int) -> list[Outcome]:
        pool = self._get_pool(workers)
        chunks = [items[i : i + self.chunk_size] for i in range(0, len(items), self.chunk_size)]
        pending = [pool.apply_async(self.chunk_function, (chunk, self.timeout)) for chunk in chunks]
        outcomes: list[Outcome] = []
        # Chunks run `workers` at a time: a chunk may wait for earlier ones before its own items start.
        deadline_per_chunk = self.timeout * self.chunk_size + self.grace
        broken = False
        for index, (chunk, result) in enumerate(zip(chunks, pending)):
            if broken:
                outcomes += ["timeout"] * len(chunk)
                continue
            rounds_ahead = index // workers + 1
            try:
                outcomes += result.get(timeout=deadline_per_chunk * rounds_ahead)
            except multiprocessing.TimeoutError:
                broken = True  # a worker no signal could stop: kill the pool, start a new one next call
                outcomes += ["timeout"] * len(chunk)
            except Exception:
                outcomes += ["error"] * len(chunk)
        if broken:
            self.close()
            self.restarts += 1
        return outcomes

    def _get_pool(self, workers: int):
        if self._pool is None or self._pool_size != workers:
            self.close()
            # spawn: forking a process that holds torch/OpenMP threads can deadlock the child
            self._pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)
            self._pool_size = workers
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __del__(self):  # pragma: no cover - best effort at interpreter exit
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self):  # a verifier may be copied (e.g. by datasets' fingerprinting); pools do not travel
        state = dict(self.__dict__)
        state["_pool"] = None
        return state
