"""Grading worker processes: subprocesses running :mod:`zrl_math._worker`, fed over pipes, killed when they hang.

Why a plain subprocess and not ``multiprocessing``: a spawn (or forkserver) pool re-imports the caller's
``__main__`` in every worker, so a script without ``if __name__ == "__main__":``, ``python -c`` or ``python -`` made
the workers die and every item came back ungraded. A subprocess running this package's own module never looks at
the caller's ``__main__``. The start-up measurements behind the choice are in :mod:`zrl_math.grading`.

Guarantees:

* **Loud start failures.** A worker that exits, prints garbage or is not ready within ``start_timeout`` raises
  :class:`WorkerStartError` with its exit status and the end of its stderr; every worker is stopped first.
* **Per-item deadlines.** Each item gets ``timeout`` seconds inside the worker (SIGALRM on its main thread) and
  ``timeout + grace`` seconds of wall clock here; a worker that does not answer in time is killed (SIGKILL, so even
  a hang inside C code ends), its item is ``"timeout"``, its other items go to other workers, and a replacement
  is started.
* **Crashes cost one item.** A worker that dies mid-item (segfault, OOM killer) gives that item ``"crashed"``.
* **Memory is capped.** With ``memory_limit_mb``, each worker's address space is limited (``RLIMIT_AS``); an item
  that needs more ends with ``MemoryError``, gets ``"oom"``, and its worker is replaced (a heap that grew that far
  stays fragmented); its other items go to other workers.
* **No zombies, no orphans.** Every process started is waited for; :meth:`WorkerPool.close` (also run at exit by
  an ``atexit`` hook) closes the workers' stdin, waits briefly and kills the rest. A worker whose parent dies exits
  on end of stdin, or within a second when busy (a watchdog thread; it cannot run while C code holds the GIL, so a
  worker stuck in such code when the trainer is SIGKILLed ends only when that code returns).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import selectors
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .frames import FrameReader, encode

logger = logging.getLogger(__name__)

STDERR_TAIL_CHARS = 3000
PIPELINE_DEPTH = 2  # chunks in flight per worker
# A chunk queued behind another waits in the pipe, whose buffer is 64 KiB on Linux: a bigger one is sent only to an
# idle worker (which reads as it comes), or writing it could block behind a hung worker.
PIPELINE_MAX_BYTES = 32 * 1024
# Workers answer item by item (so a hang costs one item). Reading each answer the moment it arrives wakes this process
# hundreds of times a second on the cores the workers grade on; waiting this long after a read lets answers pile up,
# one wake-up reads several. Harmless: each worker has a second chunk queued, and deadlines only get later.
COALESCE_SECONDS = 0.01


class WorkerStartError(RuntimeError):
    """Grading worker processes could not be started; the message says why and what to do."""


# Runs zrl_math._worker without executing zrl_math/__init__.py: that registers the plugin with zrl, which imports
# torch (1.2 s and 150 MB more per worker, measured). The package is still found the normal way (PYTHONPATH below).
_BOOTSTRAP = (
    "import importlib.util, sys; "
    "sys.modules['zrl_math'] = importlib.util.module_from_spec(importlib.util.find_spec('zrl_math')); "
    "from zrl_math._worker import main; sys.exit(main())"
)


def worker_command() -> list[str]:
    """The command that starts one worker (tests replace it to simulate workers that cannot start)."""
    return [sys.executable, "-P", "-c", _BOOTSTRAP]  # -P: the package is found on PYTHONPATH, not in the cwd


def worker_env() -> dict[str, str]:
    """The worker's environment: this process's, with this copy of ``zrl_math`` first on the import path."""
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")  # one worker per core already; threads inside would oversubscribe
    return env


class _Worker:
    """One worker process and what it is doing: starting, idle, or grading chunks (``requests``)."""

    def __init__(self, command: Sequence[str], env: dict[str, str], memory_limit_mb: int | None = None):
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the worker; read to explain failures
        self.process = subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env, close_fds=True
        )
        self.reader = FrameReader()
        self.started_at = time.monotonic()
        self.ready = False
        # Chunks sent and not fully answered, oldest first, each [index of its next item in the run, its items not
        # answered yet]. The worker grades the head; the next one waits in its stdin so it never idles between chunks.
        self.requests: collections.deque[list] = collections.deque()
        self.deadline = 0.0
        self.last_stderr = ""
        with contextlib.suppress(OSError):  # if it died already, that is reported when its stdout ends
            limit = None if memory_limit_mb is None else int(memory_limit_mb) << 20
            self.send({"sys_path": list(sys.path), "memory_limit_bytes": limit})

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def busy(self) -> bool:
        return bool(self.requests)

    def answered(self, now: float, item_seconds: float, start_timeout: float) -> int:
        """Book the head item as answered; returns its index in the run and moves the deadline on."""
        head = self.requests[0]
        position = head[0]
        head[0] += 1
        head[1].pop(0)
        if head[1]:
            self.deadline = now + item_seconds
        else:
            self.finish_head(now, start_timeout)
        return position

    def finish_head(self, now: float, start_timeout: float) -> None:
        self.requests.popleft()
        self.deadline = now + start_timeout  # until the next chunk begins: it may import its function first

    def send(self, message: Any) -> None:
        self.send_frame(encode(message))

    def send_frame(self, frame: bytes) -> None:
        self.process.stdin.write(frame)
        self.process.stdin.flush()

    def receive(self) -> tuple[list[Any], bool]:
        """Messages that arrived (call when readable), and whether the stream has ended."""
        data = os.read(self.process.stdout.fileno(), 1 << 16)
        if not data:
            return [], True
        return self.reader.feed(data), False

    def stop(self, wait: float = 0.0) -> None:
        """End the process (end of stdin, then SIGKILL after ``wait`` s), reap it, keep its stderr's tail."""
        if self.stderr.closed:
            return
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # an idle worker exits on end of stdin
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=wait)
        if self.process.poll() is None:
            self.process.kill()  # SIGKILL: ends even a hang inside C code
        self.process.wait()  # reaped: no zombie
        self.process.stdout.close()
        self.last_stderr = self._stderr_tail()
        self.stderr.close()

    def _stderr_tail(self) -> str:
        self.stderr.seek(0, os.SEEK_END)
        self.stderr.seek(max(0, self.stderr.tell() - STDERR_TAIL_CHARS))
        return self.stderr.read().decode("utf-8", "replace").strip()

    def stderr_note(self) -> str:
        return f". Its stderr ends with:\n{self.last_stderr}" if self.last_stderr else " (it wrote nothing to stderr)"


class WorkerPool:
    """``size`` worker processes grading chunks of items under per-item deadlines; see the module docstring.

    Not thread-safe: one :meth:`run` at a time (the :class:`~zrl_math.grading.Grader` holds a lock). :meth:`close`
    may be called from any thread.
    """

    def __init__(
        self,
        size: int,
        start_timeout: float = 60.0,
        command: Callable[[], list[str]] | None = None,
        memory_limit_mb: int | None = None,
    ):
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, got {size}")
        self.size = size
        self.start_timeout = float(start_timeout)
        self._command = command or worker_command
        self.memory_limit_mb = memory_limit_mb
        self._workers: list[_Worker] = []
        self._selector = selectors.DefaultSelector()
        self._owner = os.getpid()  # a forked copy of this object must not stop the parent's workers
        self._closed = False
        self.killed = 0  # workers killed because an item hung (each one replaced)
        self.crashed = 0  # workers that died on their own while grading (each one replaced)
        self.out_of_memory = 0  # workers replaced after an item ran out of memory
        _live_pools.add(self)

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers."""
        return [w.pid for w in self._workers]

    @property
    def closed(self) -> bool:
        return self._closed

    def run(self, function: Callable[..., Any], chunks: Sequence[Sequence[Any]], timeout: float, grace: float):
        """Outcomes of ``function([item], timeout)`` for every item of ``chunks``, in order.

        An item whose worker hung gets ``"timeout"``, one whose worker died gets ``"crashed"``, and the items of a
        chunk whose request failed (``function`` cannot be imported in the worker, or raised) get ``"error"``.
        Raises :class:`WorkerStartError` when a worker cannot start.
        """
        if self._closed:
            raise RuntimeError("this worker pool is closed; create a new Grader")
        outcomes: list[Any] = []
        queue: collections.deque[tuple[int, list[Any]]] = collections.deque()
        for chunk in chunks:
            queue.append((len(outcomes), list(chunk)))
            outcomes += [None] * len(chunk)
        try:
            self._top_up()
            while queue or any(w.busy for w in self._workers):
                self._dispatch(queue, function, timeout, grace)
                now = time.monotonic()
                wake = min(self._deadlines(), default=now + 1.0)
                events = self._selector.select(max(0.0, wake - now))
                for key, _ in events:
                    self._read(key.data, outcomes, queue, timeout + grace)
                self._enforce_deadlines(outcomes, queue)
                if self._closed:
                    raise RuntimeError("the grader was closed while it was grading")
                if events and (queue or any(w.busy for w in self._workers)):
                    time.sleep(COALESCE_SECONDS)
        except (WorkerStartError, RuntimeError):
            raise
        except Exception as exc:  # e.g. the selector, after close() from another thread
            if self._closed:
                raise RuntimeError("the grader was closed while it was grading") from exc
            raise
        return outcomes

    def close(self) -> None:
        """Stop every worker: close their stdin, give them a second to exit, kill the rest, reap them all."""
        self._closed = True
        workers, self._workers = self._workers, []
        if os.getpid() != self._owner:
            return
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.process.stdin.close()  # all at once: they exit in parallel
        deadline = time.monotonic() + 1.0
        for worker in workers:
            worker.stop(wait=max(0.0, deadline - time.monotonic()))
        self._selector.close()

    # ------------------------------------------------------------------------------------------------- internals
    def _top_up(self) -> None:
        """Start workers until there are ``size`` (they get ready in the background)."""
        command, env = self._command(), worker_env()
        while len(self._workers) < self.size:
            try:
                worker = _Worker(command, env, self.memory_limit_mb)
            except OSError as exc:
                self._fail_start(f"could not run {command!r}: {exc}")
            self._workers.append(worker)
            self._selector.register(worker.process.stdout, selectors.EVENT_READ, worker)

    def _dispatch(self, queue: collections.deque, function: Callable[..., Any], timeout: float, grace: float) -> None:
        # First one chunk to every idle worker, then a second one to each, queued behind the first, so that a worker
        # goes on at once when it finishes a chunk instead of waiting for this process to be scheduled.
        for depth in (1, PIPELINE_DEPTH):
            for worker in self._workers:
                if not queue:
                    return
                if worker.ready and len(worker.requests) < depth:
                    position, items = queue.popleft()
                    frame = encode((function, items, timeout))
                    if worker.requests and len(frame) > PIPELINE_MAX_BYTES:
                        queue.appendleft((position, items))  # it might not fit in the pipe: the write would block
                        continue
                    try:
                        worker.send_frame(frame)
                    except OSError:  # it died while idle: nothing of this chunk ran, so the chunk goes back
                        queue.appendleft((position, items))
                        continue
                    if not worker.requests:
                        worker.deadline = time.monotonic() + self.start_timeout  # it may import the function first
                    worker.requests.append([position, list(items)])

    def _deadlines(self) -> list[float]:
        starting = [w.started_at + self.start_timeout for w in self._workers if not w.ready]
        return starting + [w.deadline for w in self._workers if w.busy]

    def _read(self, worker: _Worker, outcomes: list[Any], queue: collections.deque, item_seconds: float) -> None:
        try:
            messages, ended = worker.receive()
        except Exception as exc:  # something other than the worker protocol was written to the worker's stdout
            messages, ended = [], True
            problem = f"a grading worker (pid {worker.pid}) wrote something that is not the worker protocol ({exc})"
            if not worker.ready:
                worker.stop()
                self._fail_start(problem + worker.stderr_note())
            logger.warning("%s; it is stopped", problem)
        for message in messages:
            kind = message[0] if isinstance(message, tuple) and message else None
            if kind == "ready":
                worker.ready = True
            elif kind == "failed" and not worker.ready:
                worker.stop()
                self._fail_start(f"a grading worker failed while starting:\n{message[1]}")
            elif kind == "begin" and worker.busy:  # the function is imported: the head chunk's items are on the clock
                worker.deadline = time.monotonic() + item_seconds
            elif kind == "item" and worker.busy:
                outcomes[worker.answered(time.monotonic(), item_seconds, self.start_timeout)] = message[1]
                if message[1] == "oom":
                    self._replace(worker, queue)
                    return
            elif kind == "error" and worker.busy:
                position, items = worker.requests[0]
                outcomes[position : position + len(items)] = ["error"] * len(items)
                logger.warning("grading worker %d could not run a request: %s", worker.pid, message[1])
                worker.finish_head(time.monotonic(), self.start_timeout)
            else:
                ended = True
        if ended:
            self._lost(worker, outcomes, queue, hung=False)

    def _enforce_deadlines(self, outcomes: list[Any], queue: collections.deque) -> None:
        now = time.monotonic()
        for worker in list(self._workers):
            if not worker.ready and now >= worker.started_at + self.start_timeout:
                worker.stop()
                self._fail_start(
                    f"a grading worker (pid {worker.pid}) was not ready after {self.start_timeout:g} s"
                    + worker.stderr_note()
                )
            elif worker.busy and now >= worker.deadline:
                self._lost(worker, outcomes, queue, hung=True)

    def _lost(self, worker: _Worker, outcomes: list[Any], queue: collections.deque, hung: bool) -> None:
        """Stop a worker that hung or died: its current item gets an outcome, its other items go back in the queue."""
        self._workers.remove(worker)
        self._selector.unregister(worker.process.stdout)
        worker.stop()
        if not worker.ready:
            self._fail_start(
                f"a grading worker (pid {worker.pid}) exited with status {worker.process.returncode} before it was "
                "ready" + worker.stderr_note()
            )
        if worker.busy:
            (position, items), *waiting = worker.requests
            outcomes[position] = "timeout" if hung else "crashed"
            for chunk in reversed([(position + 1, items[1:]), *map(tuple, waiting)]):
                if chunk[1]:
                    queue.appendleft(chunk)  # first in line, in their order
            if hung:
                self.killed += 1
            else:
                self.crashed += 1
                logger.warning(
                    "grading worker %d died (exit status %s) while grading an item, which is not scored%s",
                    worker.pid,
                    worker.process.returncode,
                    worker.stderr_note(),
                )
        if not self._closed:
            self._top_up()  # the replacement gets ready while the other workers go on

    def _replace(self, worker: _Worker, queue: collections.deque) -> None:
        """Stop a worker whose item ran out of memory and start another; its items not answered yet go back first
        in the queue."""
        self._workers.remove(worker)
        self._selector.unregister(worker.process.stdout)
        worker.stop()
        for position, items in reversed(worker.requests):
            if items:
                queue.appendleft((position, list(items)))
        self.out_of_memory += 1
        if not self._closed:
            self._top_up()

    def _fail_start(self, reason: str) -> None:
        command = " ".join(self._command())
        self.close()
        raise WorkerStartError(
            f"math_correct could not start its grading worker processes: {reason}\n"
            f"Worker command: {command}\n"
            "Check that this command runs in this environment (zrl-math and math-verify installed for this Python), "
            "or grade in this process with num_workers=0 (main thread only; each item is then bounded by SIGALRM, "
            "which cannot stop a hang inside C code)."
        )


_live_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


@atexit.register
def _close_all_pools() -> None:
    """At interpreter exit, stop every worker still running (before module teardown would make that noisy)."""
    for pool in list(_live_pools):
        with contextlib.suppress(Exception):
            pool.close()
