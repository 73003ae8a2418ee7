"""How fast can grading workers start, and what does each item cost in transport? Subprocess vs multiprocessing.

python plugins/zrl-math/tools/measure_worker_start.py [--repeats 3] [--workers 2]

Each method runs in a fresh interpreter (forkserver state is per process), ``--repeats`` times; medians are printed:

* ``subprocess``: :class:`zrl_math.workers.WorkerPool` (workers run ``zrl_math._worker`` over pipes, started by
  a bootstrap that skips ``zrl_math/__init__``), what zrl-math uses;
* ``subprocess-m``: the same started as ``python -m zrl_math._worker``, which runs ``zrl_math/__init__`` and so
  imports ``zrl_plugins`` and torch, to show what that costs;
* ``forkserver``: ``multiprocessing`` forkserver pool, ``set_forkserver_preload(["zrl_math.grading"])``, workers
  warmed by an initializer (this script has a ``__main__`` guard; a real use would also need a main-module guard);
* ``spawn``: the previous design (spawn pool), for reference; it breaks without a ``__main__`` guard.

Measured: ``first``: seconds from nothing to the first graded item, ``--workers`` workers starting; ``all``: to one
item per worker graded (a lower bound: a worker ready early may take two); ``replace``: a
one-worker pool whose worker was SIGKILLed, to the next graded item (for multiprocessing: a new one-worker pool,
since a SIGKILLed pool worker can freeze its pool; forkserver forks it from its warm server);
``us/item``: transport cost per item, 4,000 no-op items in chunks of 16 on ``--workers`` workers; ``MB/worker``:
proportional set size of one worker (shared pages split among the processes sharing them).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the workers import `noop_chunk` from this file by name

ITEM = [("4", "4")]


def noop_chunk(items, timeout):
    return ["correct"] * len(items)


def _noop():  # by module name: the workers cannot import this script's __main__
    from measure_worker_start import noop_chunk as imported

    return imported


def _pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _module_command() -> list[str]:
    return [sys.executable, "-m", "zrl_math._worker"]


def measure_subprocess(workers: int, command) -> dict[str, float]:
    from zrl_math.grading import grade_chunk
    from zrl_math.workers import WorkerPool

    out = {}
    start = time.perf_counter()
    pool = WorkerPool(workers, command=command)
    pool.run(grade_chunk, [ITEM], 5.0, 10.0)
    out["first"] = time.perf_counter() - start
    pool.run(grade_chunk, [ITEM] * workers, 5.0, 10.0)  # one chunk per worker: all of them are up
    out["all"] = time.perf_counter() - start
    out["MB/worker"] = _pss_mb(pool.pids[0])
    items = [("1", "1")] * 4000
    start = time.perf_counter()
    pool.run(_noop(), [items[i : i + 16] for i in range(0, len(items), 16)], 5.0, 10.0)
    out["us/item"] = (time.perf_counter() - start) / len(items) * 1e6
    pool.close()

    pool = WorkerPool(1, command=command)
    pool.run(grade_chunk, [ITEM], 5.0, 10.0)
    os.kill(pool.pids[0], signal.SIGKILL)
    time.sleep(0.2)  # let it die; the pool notices on its next run
    start = time.perf_counter()
    pool.run(grade_chunk, [ITEM], 5.0, 10.0)
    out["replace"] = time.perf_counter() - start
    pool.close()
    return out


def _warm() -> None:
    from zrl_math.grading import warm_up

    warm_up()


def measure_multiprocessing(workers: int, method: str) -> dict[str, float]:
    import multiprocessing

    from zrl_math.grading import grade_chunk

    ctx = multiprocessing.get_context(method)
    initializer = None
    if method == "forkserver":
        ctx.set_forkserver_preload(["zrl_math.grading", "math_verify"])
        initializer = _warm
    out = {}
    start = time.perf_counter()
    pool = ctx.Pool(workers, initializer=initializer)
    pool.apply(grade_chunk, (ITEM, 5.0))
    out["first"] = time.perf_counter() - start
    pool.starmap(grade_chunk, [(ITEM, 5.0)] * workers, chunksize=1)  # may land on one worker: a lower bound
    out["all"] = time.perf_counter() - start
    out["MB/worker"] = _pss_mb(pool._pool[0].pid)
    items = [("1", "1")] * 4000
    start = time.perf_counter()
    pending = [pool.apply_async(_noop(), (items[i : i + 16], 5.0)) for i in range(0, len(items), 16)]
    for result in pending:
        result.get()
    out["us/item"] = (time.perf_counter() - start) / len(items) * 1e6
    pool.terminate()
    pool.join()

    # A SIGKILLed pool worker may die holding the task queue's lock and freeze the pool: a hung worker means a
    # new pool (what the previous design did), which for forkserver forks from the warm server.
    start = time.perf_counter()
    pool = ctx.Pool(1, initializer=initializer)
    pool.apply(grade_chunk, (ITEM, 5.0))
    out["replace"] = time.perf_counter() - start
    pool.terminate()
    pool.join()
    return out


METHODS = ("subprocess", "subprocess-m", "forkserver", "spawn")


def run_one(method: str, workers: int) -> dict[str, float]:
    if method == "subprocess":
        return measure_subprocess(workers, command=None)
    if method == "subprocess-m":
        return measure_subprocess(workers, command=_module_command)
    return measure_multiprocessing(workers, method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--method", choices=METHODS, help="measure one method in this process (used internally)")
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_one(args.method, args.workers)))
        return
    print(f"load average before: {os.getloadavg()}")
    rows = {}
    for _ in range(args.repeats):
        for method in METHODS:  # interleaved, so a burst of load elsewhere hits every method alike
            command = [sys.executable, __file__, "--method", method, "--workers", str(args.workers)]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            rows.setdefault(method, []).append(result)
    keys = ("first", "all", "replace", "us/item", "MB/worker")
    print("| method | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for method, results in rows.items():
        medians = [statistics.median(r[k] for r in results) for k in keys]
        print(f"| {method} | " + " | ".join(f"{m:.2f}" if m < 100 else f"{m:.0f}" for m in medians) + " |")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
