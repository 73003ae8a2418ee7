"""A grading worker process, driven by :mod:`zrl_math.workers` over its stdin/stdout.

Started by running this module (see ``workers.worker_command``; ``python -m zrl_math._worker`` works too, only
slower), never by re-running the caller's script, so it works whatever the caller's ``__main__`` is (a script
without ``if __name__ == "__main__":``, ``python -c``, ``python -`` from stdin).

Conversation (every message a :mod:`zrl_math.frames` frame):

1. parent → worker: ``{"sys_path": [...]}``, so functions the parent names can be imported the same way here.
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
import signal
import sys
import threading
import time
import traceback
from typing import Any

from .frames import read_frame_bytes, write_frame

ORPHAN_CHECK_SECONDS = 1.0


def _exit_when_orphaned(parent: int) -> None:
    """Exit if the parent dies while this worker is busy (an idle worker sees end of stdin instead)."""
    # SIGALRM bounds each item on the main thread: this thread must not take it, or a blocked main thread would
    # never be interrupted.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    while True:
        time.sleep(ORPHAN_CHECK_SECONDS)
        if os.getppid() != parent:
            os._exit(0)


def _serve(inbox: int, outbox: Any) -> None:
    from . import grading

    grading.warm_up()
    # What the imports built lives as long as the worker: collections need only scan what grading creates.
    gc.freeze()
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
        sys.path[:] = pickle.loads(payload)["sys_path"]
        _serve(0, outbox)
    except BrokenPipeError:  # the parent went away mid-answer
        return 0
    except Exception:
        with contextlib.suppress(BrokenPipeError):
            write_frame(outbox, ("failed", traceback.format_exc()))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
