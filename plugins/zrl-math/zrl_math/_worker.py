"""A grading worker process, driven by :mod:`zrl_math.workers` over its stdin/stdout.

Started by running this module (see ``workers.worker_command``; ``python -m zrl_math._worker`` works too, only
slower), never by re-running the caller's script, so it works whatever the caller's ``__main__`` is (a script
without ``if __name__ == "__main__":``, ``python -c``, ``python -`` from stdin).

Conversation (every message a :mod:`zrl_math.frames` frame):

1. parent → worker: ``{"sys_path": [...], "memory_limit_bytes": n or None}``, so functions the parent names can be
   imported the same way here; once warm, the worker limits its address space to ``n`` bytes (``RLIMIT_AS``), so an
   item that needs more gets a ``MemoryError`` (outcome ``"oom"``) instead of taking the machine's memory.
2. worker → parent: ``("ready", pid)`` once math-verify is imported and warm, or ``("failed", traceback)``.
3. parent → worker: ``(function, items, timeout)``. The worker unpickles it (importing the function's module, which
   may take a while the first time) and answers ``("begin",)``, then calls ``function([item], timeout)`` on one
   item at a time and answers ``("item", outcome)`` after each, so that a hang costs only its own item. It answers
   ``("error", message)`` instead when the request cannot be run (e.g. the function cannot be imported or raises).
4. End of stdin: the parent closed the worker or died; the worker exits.
"""

from __future__ import annotations

import contextlib
import gc
import os
import pickle
import resource
import signal
import sys
import threading
import time
import traceback
from typing import Any

from .frames import read_frame_bytes, write_frame

ORPHAN_CHECK_SECONDS = 1.0
# math-verify turns every exception into "no match", MemoryError included: an item whose grading took the worker's
# address space this close to its limit is reported as "oom" whatever it returned (its worker is then replaced, so
# the peak is always this item's).
OOM_PEAK_FRACTION = 0.9


def _exit_when_orphaned(parent: int) -> None:
    """Exit if the parent dies while this worker is busy (an idle worker sees end of stdin instead)."""
    # SIGALRM bounds each item on the main thread: this thread must not take it, or a blocked main thread would
    # never be interrupted.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    while True:
        time.sleep(ORPHAN_CHECK_SECONDS)
        if os.getppid() != parent:
            os._exit(0)


def _limit_memory(limit: int | None) -> None:
    """Cap this process's address space at ``limit`` bytes, after the imports (which need what they need)."""
    if limit is None:
        return
    with open("/proc/self/statm") as statm:  # Linux, as RLIMIT_AS: the first field is the size in pages
        in_use = int(statm.read().split()[0]) * resource.getpagesize()
    if limit <= in_use:
        raise ValueError(
            f"memory_limit_mb={limit >> 20} is below the {in_use >> 20} MB of address space a grading worker uses "
            "before grading anything; raise it (or set None for no limit)."
        )
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _peak_address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) << 10
    return 0


def _serve(inbox: int, outbox: Any, memory_limit: int | None) -> None:
    from . import grading

    grading.warm_up()
    # What the imports built lives as long as the worker: collections need only scan what grading creates.
    gc.freeze()
    _limit_memory(memory_limit)
    write_frame(outbox, ("ready", os.getpid()))
    while True:
        payload = read_frame_bytes(inbox)
        if payload is None:
            return
        try:
            function, items, timeout = pickle.loads(payload)
        except Exception as exc:  # e.g. the function's module is not importable here
            write_frame(outbox, ("error", f"{type(exc).__name__}: {exc}"))
            continue
        write_frame(outbox, ("begin",))  # the function is imported: from here on, items are on the clock
        for item in items:
            try:
                (outcome,) = function([item], timeout)
                if memory_limit is not None and _peak_address_space() >= OOM_PEAK_FRACTION * memory_limit:
                    outcome = "oom"
            except MemoryError:
                outcome = "oom"
            except Exception as exc:
                write_frame(outbox, ("error", f"{type(exc).__name__}: {exc}"))
                break
            write_frame(outbox, ("item", outcome))


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it closes us
    # The protocol owns the real stdout; anything grading code prints goes to stderr instead of corrupting it.
    outbox = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    try:
        payload = read_frame_bytes(0)
        if payload is None:
            return 0
        setup = pickle.loads(payload)
        sys.path[:] = setup["sys_path"]
        _serve(0, outbox, setup.get("memory_limit_bytes"))
    except BrokenPipeError:  # the parent went away mid-answer
        return 0
    except Exception:
        with contextlib.suppress(BrokenPipeError):
            write_frame(outbox, ("failed", traceback.format_exc()))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
