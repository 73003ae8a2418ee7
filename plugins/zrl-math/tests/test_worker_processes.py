"""Grading worker processes: any caller's __main__, loud start failures, hangs and crashes, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from zrl_math import workers
from zrl_math.grading import Grader, grade_chunk
from zrl_math.workers import WorkerStartError

from zrl_plugins import PluginError, load_component
from zrl_plugins.framework.verifier_guard import NamedVerifier

PLUGIN = Path(__file__).resolve().parents[1]

# No `if __name__ == "__main__":` on purpose: a spawn pool re-ran this in every worker, which died, and every
# completion was scored None.
CALLER = """
import json
from zrl_plugins import PluginError, load_component
from zrl_plugins.framework.verifier_guard import NamedVerifier
verifier = load_component("verifier", "math_correct", num_workers=1)
rewards = verifier(prompts=[""], completions=["The answer is \\\\boxed{4}"], answer=["4"])
print(json.dumps({"rewards": rewards, "pids": verifier.grader._pool.pids}))
"""


def _run_python(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGIN), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, *args], input=stdin, capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


def _alive(pid: int) -> bool:
    """Whether a process exists at all (a zombie counts: it has not been reaped)."""
    return Path(f"/proc/{pid}").exists() if Path("/proc").exists() else _signal_zero(pid)


def _signal_zero(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("style", ["script_without_main_guard", "stdin", "dash_c"])
def test_any_caller_main_module_grades_and_exits_cleanly(style, tmp_path):
    if style == "script_without_main_guard":
        script = tmp_path / "score.py"
        script.write_text(CALLER)
        done = _run_python([str(script)], cwd=tmp_path)
    elif style == "stdin":
        done = _run_python(["-"], cwd=tmp_path, stdin=CALLER)
    else:
        done = _run_python(["-c", CALLER], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rewards"] == [1.0]
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not any(_alive(pid) for pid in result["pids"])  # the atexit hook stopped and reaped the worker


# ---------------------------------------------------------------------------------------------------- start failures
def _use_command(monkeypatch, code: str) -> None:
    monkeypatch.setattr(workers, "worker_command", lambda: [sys.executable, "-c", code])


def test_a_worker_that_exits_at_once_is_a_loud_error_every_time(monkeypatch):
    _use_command(monkeypatch, "import sys; print('no math here', file=sys.stderr); sys.exit(3)")
    grader = Grader(num_workers=2)
    with pytest.raises(WorkerStartError, match=r"exited with status 3 before it was ready(.|\n)*no math here"):
        grader.grade_many([("4", "4")])
    start = time.perf_counter()
    with pytest.raises(WorkerStartError, match="raised earlier; not retried"):
        grader.grade_many([("4", "4")])  # not silently None, and not a second slow attempt
    assert time.perf_counter() - start < 1.0


def test_the_verifier_raises_instead_of_scoring_none_and_training_stops(monkeypatch):
    _use_command(monkeypatch, "raise SystemExit(1)")
    verifier = load_component("verifier", "math_correct", num_workers=1)
    with pytest.raises(WorkerStartError, match="num_workers=0"):  # the message says what to do
        verifier(prompts=[""], completions=[r"\boxed{4}"], answer=["4"])
    guarded = NamedVerifier("math_correct", load_component("verifier", "math_correct", num_workers=1), "zrl-math", 30)
    with pytest.raises(PluginError, match="every row failed.*could not start its grading worker processes"):
        guarded(prompts=[""] * 2, completions=[r"\boxed{4}"] * 2, answer=["4"] * 2)  # as the trainer calls it


def test_a_worker_writing_garbage_or_never_ready_is_a_loud_error(monkeypatch):
    _use_command(monkeypatch, "import time; print('hello from a stranger', flush=True); time.sleep(60)")
    with pytest.raises(WorkerStartError, match="not the worker protocol"):
        Grader(num_workers=1).grade_many([("4", "4")])

    _use_command(monkeypatch, "import time; time.sleep(60)")
    grader = Grader(num_workers=1, start_timeout=1.0)
    start = time.perf_counter()
    with pytest.raises(WorkerStartError, match="not ready after 1 s"):
        grader.grade_many([("4", "4")])
    assert time.perf_counter() - start < 10


def test_a_failure_inside_the_worker_at_start_is_reported_with_its_traceback(monkeypatch):
    broken = "import zrl_math.grading as g; g.warm_up = None; from zrl_math._worker"  # warm_up() raises TypeError
    bootstrap = workers._BOOTSTRAP.replace("from zrl_math._worker", broken)
    monkeypatch.setattr(workers, "worker_command", lambda: [sys.executable, "-c", bootstrap])
    with pytest.raises(WorkerStartError, match=r"failed while starting(.|\n)*TypeError"):
        Grader(num_workers=1).grade_many([("4", "4")])


# ---------------------------------------------------------------------------------------------------- hangs, crashes
def misbehave_on_marker(items, timeout):
    """Grades normally, except: answer "hang" blocks where SIGALRM cannot reach, "crash" kills the worker, "boom"
    raises."""
    answer = items[0][0]
    if answer == "hang":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(3600)
    if answer == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if answer == "boom":
        raise ValueError("boom")
    return grade_chunk(items, timeout)


def test_a_hanging_item_times_out_its_worker_is_replaced_and_later_items_grade():
    grader = Grader(num_workers=1, timeout=0.5, chunk_size=3, grace=1.0, chunk_function=misbehave_on_marker)
    with grader:
        first = grader.grade_many([("1", "1")])
        (hung_pid,) = grader._pool.pids
        start = time.perf_counter()
        # chunks [1, hang, 2] [3, 4, 5] [6]: the second waits in the hung worker's pipe when it is killed
        items = [("1", "1"), ("hang", "1"), ("2", "2"), ("3", "4"), ("4", "4"), ("5", "5"), ("6", "6")]
        outcomes = grader.grade_many(items)
        assert time.perf_counter() - start < 20
        assert first == ["correct"]
        # the items after the hang, in its chunk and the chunks queued behind it, are graded by the replacement
        assert outcomes == ["correct", "timeout", "correct", "wrong", "correct", "correct", "correct"]
        assert grader.restarts == 1
        assert not _alive(hung_pid)  # killed and reaped
        assert grader._pool.pids and grader._pool.pids[0] != hung_pid
        assert grader.grade_many([("5", "5")]) == ["correct"]  # the replacement goes on
        pids = grader._pool.pids
    assert not any(_alive(pid) for pid in pids)  # leaving the `with` block stopped them


def test_a_chunk_whose_function_raises_gives_error_for_its_remaining_items_only():
    with Grader(num_workers=1, chunk_size=2, chunk_function=misbehave_on_marker) as grader:
        items = [("1", "1"), ("boom", "1"), ("2", "2"), ("3", "3")]
        assert grader.grade_many(items) == ["correct", "error", "correct", "correct"]
        items = [("boom", "1"), ("2", "2"), ("3", "3")]
        assert grader.grade_many(items) == ["error", "error", "correct"]


def test_a_crashing_worker_costs_one_item_which_is_not_scored():
    verifier = load_component("verifier", "math_correct", num_workers=2, timeout=2)
    verifier.grader.chunk_function = misbehave_on_marker
    verifier.grader.chunk_size = 2
    logged = {}
    completions = [r"\boxed{1}", r"\boxed{crash}", r"\boxed{3}", r"\boxed{4}", r"\boxed{9}"]
    try:
        rewards = verifier(
            prompts=[""] * 5, completions=completions, answer=["1", "2", "3", "4", "5"], log_metric=logged.__setitem__
        )
    finally:
        verifier.close()
    assert rewards == [1.0, None, 1.0, 1.0, 0.0]
    assert logged["verifier/crashes"] == 1.0 and logged["verifier/timeouts"] == 0.0


ORPHAN_MAKER = """
import sys, time
sys.path.insert(0, {tests!r})
from test_worker_processes import misbehave_on_marker
from zrl_math.grading import Grader
grader = Grader(num_workers=1, timeout=0.5, grace=600, chunk_function=misbehave_on_marker)
grader.grade_many([("1", "1")])
print(grader._pool.pids[0], flush=True)
grader.grade_many([("hang", "1")])  # killed (SIGKILL) by the test while its worker hangs
"""


def test_a_hung_worker_exits_when_its_parent_is_killed(tmp_path):
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGIN), env.get("PYTHONPATH")) if p)
    code = ORPHAN_MAKER.format(tests=str(Path(__file__).parent))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        worker = int(parent.stdout.readline())
        time.sleep(1.0)  # the worker is now inside the hanging item
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker)  # the orphan noticed its parent is gone and exited (init reaped it)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_close_stops_every_worker_and_a_later_call_starts_new_ones():
    grader = Grader(num_workers=2)
    assert grader.grade_many([("1", "1")] * 4) == ["correct"] * 4
    pids = grader._pool.pids
    assert len(pids) == 2
    grader.close()
    assert not any(_alive(pid) for pid in pids)
    assert grader.grade_many([("2", "2")]) == ["correct"]
    grader.close()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc")
def test_workers_do_not_load_torch():
    """zrl_math/__init__ registers the plugin, which imports torch: the workers skip it (1.2 s, 150 MB each)."""
    with Grader(num_workers=1) as grader:
        grader.grade_many([("1", "1")])
        maps = Path(f"/proc/{grader._pool.pids[0]}/maps").read_text()
    assert "libtorch" not in maps


# A power the size of 2^40 bits: sympy allocates it step by step until the worker's address space runs out.
MEMORY_BOMB = "\\boxed{2^{2^{40}}}"


def test_an_item_over_the_memory_limit_costs_that_item_and_its_worker_is_replaced():
    # 250 MB: the worker itself takes ~140 MB; the bomb reaches the limit in ~2 s, well within the 8 s deadline
    verifier = load_component("verifier", "math_correct", num_workers=2, timeout=8, memory_limit_mb=250)
    try:
        verifier(prompts=[""], completions=["\\boxed{1}"], answer=["1"])  # workers started and warm
        pids = set(verifier.grader._pool.pids)
        completions = [MEMORY_BOMB, "\\boxed{10^{10^{10}}!}"] + [f"\\boxed{{{i}}}" for i in range(8)]
        golds = ["5", "5"] + [str(i) for i in range(8)]
        logged = {}
        rewards = verifier(prompts=[""] * 10, completions=completions, answer=golds, log_metric=logged.__setitem__)
        assert rewards[0] is None and rewards[1] in (0.0, None)
        assert rewards[2:] == [1.0] * 8  # normal items in the same batch still grade right
        assert logged["verifier/math_correct/oom"] >= 1.0
        assert verifier.grader._pool.out_of_memory >= 1
        assert len(verifier.grader._pool.pids) == 2 and set(verifier.grader._pool.pids) != pids  # replaced
        assert verifier(prompts=[""], completions=["\\boxed{3}"], answer=["3"]) == [1.0]
    finally:
        verifier.close()


def test_a_memory_limit_below_the_worker_itself_is_a_start_error():
    verifier = load_component("verifier", "math_correct", num_workers=1, memory_limit_mb=20)
    with pytest.raises(PluginError, match="memory_limit_mb=20 is below the .* MB of address space"):
        NamedVerifier("math_correct", verifier, "zrl-math", 60)(prompts=[""], completions=["\\boxed{1}"], answer=["1"])
    verifier.close()
