"""Mathematical equivalence with math-verify, made safe for training loops.

math-verify bounds its own work with ``signal.alarm``, which only works on a process's main thread. Grading here
runs in worker processes (each grades on its own main thread, under a ``setitimer`` deadline per item), and the
parent additionally gives every item a wall-clock deadline: a worker stuck where no signal reaches it is killed and
replaced, and its other items are graded elsewhere. Whatever happens, every item gets an outcome and training goes
on; only workers that cannot start at all stop it, with :class:`~zrl_math.workers.WorkerStartError`.

How the workers start (:mod:`zrl_math.workers`): plain subprocesses running :mod:`zrl_math._worker` (without
executing ``zrl_math/__init__``, which would import torch), talking length-prefixed pickles over stdin/stdout. They
never import the caller's ``__main__``, unlike the spawn pool used before, whose workers died under a script without
``if __name__ == "__main__":``, ``python -c`` or ``python -``, leaving every item ungraded. Chosen over a
multiprocessing forkserver by measurement (``tools/measure_worker_start.py``, 2 workers, medians of 3, on the 2-core
dev machine while other jobs kept it busy, load average 4.5-5.3):

=================  ===========  =========================  ===========  ==========
method             first item   replace a killed worker    µs / item    MB/worker
=================  ===========  =========================  ===========  ==========
subprocess (used)  0.92 s       0.46 s                     10           51
python -m worker   3.83 s       1.76 s                     7            195
forkserver         1.87 s       0.14 s                     4            69
spawn (before)     1.82 s       1.79 s                     5            195
=================  ===========  =========================  ===========  ==========

The subprocess reaches its first graded item twice as fast as forkserver with the least memory; forkserver replaces
a hung worker faster, but that is rare and happens in the background while the other workers go on. Forkserver
also needs a main-module guard and a process-wide preload list, and a SIGKILLed pool worker can leave its pool's
task queue locked. Transport costs microseconds per item against milliseconds of grading.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Literal

from .workers import WorkerPool, WorkerStartError

# math-verify warns on every call that its own timeout is off: here the deadline is ours (see `grade`).
logging.getLogger("math_verify").setLevel(logging.ERROR)

Outcome = Literal["correct", "wrong", "no_answer", "unparsable_gold", "timeout", "crashed", "error", "oom"]


class _ItemTimeout(BaseException):
    """Raised by the per-item alarm. A BaseException, as math-verify's own ``TimeoutException``: math-verify turns
    every ``Exception`` into "no match", which would grade an item that ran out of time as wrong (reward 0) instead
    of not scored."""


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


# A relation an answer opens with ("≠ 4", "\\leq 4"): math-verify drops it and compares what follows, so "\\neq 4"
# would equal 4. Compared as written instead: the answer and the gold must open with the same relation (or none).
_LEADING_RELATION = re.compile(r"^(\\neq|\\ne|\\leq|\\le|\\geq|\\ge|\\lt|\\gt|\\approx|<|>|≠|≤|≥)(?![A-Za-z])")
_SAME_RELATION = {
    "\\ne": "\\neq",
    "≠": "\\neq",
    "\\le": "\\leq",
    "≤": "\\leq",
    "\\ge": "\\geq",
    "≥": "\\geq",
    "\\lt": "<",
    "\\gt": ">",
}


def leading_relation(text: str) -> str | None:
    """The relation ``text`` opens with, spelled one way (``\\ne`` → ``\\neq``), or ``None``."""
    core = text.strip().strip("$").strip()
    if core.startswith("\\boxed{") and core.endswith("}"):
        core = core[len("\\boxed{") : -1].strip()
    match = _LEADING_RELATION.match(core)
    return _SAME_RELATION.get(match.group(1), match.group(1)) if match else None


def _grade_unbounded(answer: str | None, gold: str) -> Outcome:
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    if not any(not isinstance(x, str) for x in gold_parsed):  # math-verify keeps the raw string when it fails
        return "unparsable_gold"
    if answer is None:
        return "no_answer"
    if leading_relation(answer) != leading_relation(str(gold)):
        return "wrong"
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
    except MemoryError:  # over the worker's RLIMIT_AS (see `_worker`), where math-verify lets it through
        return "oom"
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
    """Grade a chunk of ``(answer, gold)`` items (what workers run, one item at a time; see :mod:`zrl_math._worker`)."""
    return [grade(answer, gold, timeout) for answer, gold in items]


def warm_up() -> None:
    """Import math-verify and grade one item, so that a worker's first real item is not slowed by imports."""
    grade("\\frac{1}{2}", "0.5", timeout=60.0)


class Grader:
    """Grades ``(answer, gold)`` pairs in parallel worker processes with per-item time limits.

    Args:
        timeout: seconds per item (the issue's default: 5).
        num_workers: worker processes; ``None`` = CPU count; ``0`` = grade in this process (with the per-item limit
            when called on the main thread; from another thread a one-worker pool is used instead, since signals
            cannot bound the work there).
        chunk_size: items sent to a worker at a time (the worker still answers item by item).
        grace: seconds an item may take beyond ``timeout`` before its worker is deemed hung, killed and replaced.
        chunk_function: the function run in the workers (module level, importable by name, called with one item
            at a time); tests inject misbehaving ones.
        start_timeout: seconds a new worker may take to import math-verify and say it is ready (and to import
            ``chunk_function``'s module the first time).
        memory_limit_mb: address space of each worker process (``RLIMIT_AS``, Linux), imports included (a worker
            uses about 140 MB before grading); an item that needs more gets ``"oom"`` and its worker is replaced.
            ``None``: no limit. Not applied when grading in this process (``num_workers=0``).

    Worker processes are started on first use, replaced when one hangs or dies, and stopped by :meth:`close`, by
    leaving a ``with Grader(...)`` block, or at interpreter exit. A worker that cannot start raises
    :class:`~zrl_math.workers.WorkerStartError`; after that, every call raises it again (nothing is graded
    silently as ``None``).
    """

    def __init__(
        self,
        timeout: float = 5.0,
        num_workers: int | None = None,
        chunk_size: int = 16,
        grace: float = 10.0,
        chunk_function: Callable[[Sequence[tuple[str | None, str]], float], list[Outcome]] = grade_chunk,
        start_timeout: float = 60.0,
        memory_limit_mb: int | None = 2048,
    ):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if getattr(chunk_function, "__module__", None) == "__main__":
            raise ValueError(
                f"chunk_function {chunk_function.__name__!r} is defined in __main__, which grading workers do not "
                "import; define it in an importable module."
            )
        self.timeout = float(timeout)
        self.num_workers = (os.cpu_count() or 1) if num_workers is None else int(num_workers)
        self.chunk_size = max(1, int(chunk_size))
        self.grace = float(grace)
        self.chunk_function = chunk_function
        self.start_timeout = float(start_timeout)
        self.memory_limit_mb = memory_limit_mb
        self._pool: WorkerPool | None = None
        self._start_error: WorkerStartError | None = None
        self._lock = threading.Lock()
        self._killed_before = 0  # workers killed by pools this grader has since closed

    @property
    def restarts(self) -> int:
        """Workers killed because an item hung (each was replaced)."""
        return self._killed_before + (self._pool.killed if self._pool is not None else 0)

    def grade_many(self, items: Sequence[tuple[str | None, str]]) -> list[Outcome]:
        """Outcomes of ``items`` in order; raises :class:`~zrl_math.workers.WorkerStartError` if workers cannot
        start."""
        items = list(items)
        if not items:
            return []
        if self.num_workers == 0 and threading.current_thread() is threading.main_thread():
            return self.chunk_function(items, self.timeout)
        with self._lock:
            if self._start_error is not None:
                raise WorkerStartError(f"(raised earlier; not retried) {self._start_error}")
            pool = self._get_pool(max(1, self.num_workers))
            chunks = [items[i : i + self.chunk_size] for i in range(0, len(items), self.chunk_size)]
            try:
                return pool.run(self.chunk_function, chunks, self.timeout, self.grace)
            except WorkerStartError as error:
                self._start_error = error
                self._drop_pool()
                raise

    def _get_pool(self, workers: int) -> WorkerPool:
        if self._pool is None or self._pool.size != workers or self._pool.closed:
            self._drop_pool()
            self._pool = WorkerPool(workers, start_timeout=self.start_timeout, memory_limit_mb=self.memory_limit_mb)
        return self._pool

    def _drop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            self._killed_before += pool.killed

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        self._drop_pool()

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort; the atexit hook in `workers` covers interpreter exit
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self):  # a verifier may be copied (e.g. by datasets' fingerprinting); processes do not travel
        state = dict(self.__dict__)
        state["_pool"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
