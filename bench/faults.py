"""Fault injection on a tiny random Llama on CPU: what a run does when a verifier hangs (sync or async), a grading
item eats memory, a completion is built to make extraction quadratic, a verifier returns a reward beyond float32,
a config gives kwargs of the wrong type, or the data cannot be trained on — plus the checkpoint cases of
``bench.fault_cases_checkpoint`` where that module exists.

python -m bench.faults [--workdir DIR]

Each row: ``fault`` (what was injected), ``outcome`` (what the run did, with the wall time), ``resumed_from`` and
``state_equal`` (checkpoint cases only; ``None`` otherwise), ``message`` (the error or warning the user sees).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from zrl_plugins import hookimpl

MESSAGE_CHARS = 400
TINY = dict(
    per_device_train_batch_size=8,
    num_generations=4,
    max_completion_length=8,
    logging_steps=1,
    report_to=[],
    use_cpu=True,
    bf16=False,
    save_strategy="no",
    gradient_checkpointing=False,
    seed=0,
    learning_rate=1e-2,
    temperature=1.0,
)


# ---------------------------------------------------------------------------------------------------- verifiers
def _digits(prompts, completions, **columns):
    return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]


def _spinning(prompts, completions, **columns):
    while True:  # a runaway loop in Python
        pass


_RELEASE = threading.Event()


def _blocked(prompts, completions, **columns):
    _RELEASE.wait(timeout=120)  # a wait inside C code (a socket read, a lock): no exception reaches it before
    return [0.0] * len(completions)


class _AsyncHang:
    async def __call__(self, prompts, completions, **columns):
        await asyncio.sleep(3600)  # a remote judge that never answers
        return [0.0] * len(completions)


def _overflow(prompts, completions, **columns):
    return [1e39] * len(completions)  # finite as a Python float, inf as float32


class _FaultyVerifiers:
    @hookimpl
    def zrl_register_verifiers(self, register):
        register("digits", lambda: _digits)
        register("spin", lambda: _spinning)
        register("blocked", lambda: _blocked)
        register("async_hang", _AsyncHang)
        register("overflow", lambda: _overflow)


# ---------------------------------------------------------------------------------------------------- harness
class Bench:
    def __init__(self, workdir: Path):
        from zrl_plugins.apps.tiny_model import build_tiny_model

        self.workdir = workdir
        self.model = str(build_tiny_model(workdir / "tiny-llama"))
        self.rows = [{"prompt": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(16)]

    def trainer(self, data: Any = None, model: str | None = None, **overrides: Any):
        from datasets import Dataset

        from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
        from zrl_plugins.framework.plugins import ZRLPluginManager

        pm = ZRLPluginManager()
        pm.register_plugin(_FaultyVerifiers(), name="faulty")
        out = tempfile.mkdtemp(dir=self.workdir)
        config = ZRLConfig(**{"output_dir": out, **TINY, **overrides})
        data = Dataset.from_list(self.rows) if data is None else data
        return ZRLGRPOTrainer(model or self.model, args=config, train_dataset=data, plugin_manager=pm)


def row(fault: str, outcome: str, message: str = "", resumed_from: Any = None, state_equal: Any = None) -> dict:
    message = " ".join(message.split())
    if len(message) > MESSAGE_CHARS:
        message = message[: MESSAGE_CHARS - 1] + "…"
    return {
        "fault": fault,
        "outcome": outcome,
        "resumed_from": resumed_from,
        "state_equal": state_equal,
        "message": message,
    }


def _threads(name: str) -> int:
    return sum(t.is_alive() and t.name == f"zrl-verifier-{name}" for t in threading.enumerate())


def _train_until_error(bench: Bench, fault: str, verifier: str, **overrides: Any) -> dict:
    trainer = bench.trainer(verifiers=[verifier, "digits"], **overrides)
    started = time.perf_counter()
    try:
        trainer.train()
    except Exception as exc:
        seconds = time.perf_counter() - started
        outcome = (
            f"stopped at step {trainer.state.global_step + 1} after {seconds:.1f} s with "
            f"{type(exc).__name__}; verifier threads left running: {_threads(verifier)}"
        )
        return row(fault, outcome, str(exc))
    seconds = time.perf_counter() - started
    return row(fault, f"trained {trainer.state.global_step} steps in {seconds:.1f} s without an error")


# ---------------------------------------------------------------------------------------------------- cases
def hanging_sync(bench: Bench) -> dict:
    return _train_until_error(
        bench,
        "sync verifier spinning forever (verifier_timeout=1, max 2 consecutive)",
        "spin",
        max_steps=5,
        verifier_timeout=1.0,
        verifier_max_consecutive_timeouts=2,
    )


def blocked_sync(bench: Bench) -> dict:
    _RELEASE.clear()
    try:
        result = _train_until_error(
            bench,
            "sync verifier blocked inside C code (verifier_timeout=1, max 3)",
            "blocked",
            max_steps=5,
            verifier_timeout=1.0,
            verifier_max_consecutive_timeouts=3,
        )
    finally:
        _RELEASE.set()
    return result


def hanging_async(bench: Bench) -> dict:
    return _train_until_error(
        bench,
        "async verifier awaiting forever (verifier_timeout=1, max 2 consecutive)",
        "async_hang",
        max_steps=5,
        verifier_timeout=1.0,
        verifier_max_consecutive_timeouts=2,
    )


def overflowing_reward(bench: Bench) -> dict:
    return _train_until_error(bench, "verifier returns 1e39 (finite float, inf in float32)", "overflow", max_steps=2)


def memory_bomb(bench: Bench) -> dict:
    from zrl_plugins import load_component

    verifier = load_component("verifier", "math_correct", num_workers=2, timeout=5, memory_limit_mb=250)
    try:
        verifier(prompts=[""], completions=["\\boxed{1}"], answer=["1"])  # workers up
        bombs = ["\\boxed{2^{2^{40}}}", "\\boxed{10^{10^{10}}!}"]
        completions = bombs + [f"The answer is \\boxed{{{i}}}" for i in range(8)]
        golds = ["5", "5"] + [str(i) for i in range(8)]
        logged: dict[str, float] = {}
        started = time.perf_counter()
        rewards = verifier(prompts=[""] * 10, completions=completions, answer=golds, log_metric=logged.__setitem__)
        seconds = time.perf_counter() - started
        pool = verifier.grader._pool
        outcome = (
            f"bombs scored {rewards[:2]}, normal items {sum(r == 1.0 for r in rewards[2:])}/8 right, "
            f"{seconds:.1f} s; verifier/math_correct/oom={logged['verifier/math_correct/oom']:g}, workers "
            f"replaced after OOM: {pool.out_of_memory}, killed on deadline: {pool.killed}"
        )
        return row(
            "math_correct on \\boxed{2^{2^{40}}} and \\boxed{10^{10^{10}}!} next to 8 normal items "
            "(memory_limit_mb=250, timeout=5)",
            outcome,
        )
    finally:
        verifier.close()


def quadratic_extraction(bench: Bench) -> dict:
    from zrl_math.extract import extract_answer

    from zrl_plugins import load_component

    text = "\\boxed{" * 10_000
    boxed_format = load_component("verifier", "boxed_format")
    started = time.perf_counter()
    reward = boxed_format(prompts=[""], completions=[text])
    boxed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    extract_answer(text)
    extract_seconds = time.perf_counter() - started
    return row(
        '"\\\\boxed{" * 10000 (70 KB) as a completion',
        f"boxed_format {reward} in {boxed_seconds * 1000:.1f} ms; math_correct's extraction "
        f"{extract_seconds * 1000:.1f} ms",
    )


def wrong_kwarg_types(bench: Bench) -> list[dict]:
    cases = [
        ("normalizer_kwargs={'delta': 'x'}", dict(verifiers=["digits"], normalizer_kwargs={"delta": "x"})),
        (
            "policy_loss_kwargs={'epsilon_low': '0.2'}",
            dict(verifiers=["digits"], policy_loss="clip", policy_loss_kwargs={"epsilon_low": "0.2"}),
        ),
        (
            "verifier_kwargs={'math_correct': {'timeout': 'x'}}",
            dict(verifiers=["math_correct"], verifier_kwargs={"math_correct": {"timeout": "x"}}),
        ),
    ]
    return [_before_compute(bench, fault, **overrides) for fault, overrides in cases]


def bad_data(bench: Bench) -> list[dict]:
    from datasets import Dataset

    cases = [
        ("data set without a 'prompt' column", Dataset.from_list([{"question": "1+1", "answer": "2"}] * 4)),
        ("empty data set", Dataset.from_dict({"prompt": [], "answer": []})),
        (
            "a missing prompt (None in row 2)",
            Dataset.from_list([{"prompt": "1+1", "answer": "2"}] * 2 + [{"prompt": None, "answer": "2"}]),
        ),
    ]
    return [_before_compute(bench, fault, data=data, verifiers=["digits"]) for fault, data in cases]


def _before_compute(bench: Bench, fault: str, **overrides: Any) -> dict:
    started = time.perf_counter()
    try:
        bench.trainer(model="/nonexistent/model", **overrides)  # an error about the model would mean a late check
    except Exception as exc:
        outcome = f"{type(exc).__name__} after {time.perf_counter() - started:.2f} s, before the model loads"
        return row(fault, outcome, str(exc))
    return row(fault, "accepted")


CASES: list[Callable[[Bench], dict | list[dict]]] = [
    hanging_sync,
    blocked_sync,
    hanging_async,
    memory_bomb,
    quadratic_extraction,
    overflowing_reward,
    wrong_kwarg_types,
    bad_data,
]


def checkpoint_rows(workdir: Path) -> list[dict]:
    """The checkpoint cases (kill points, corrupt and malicious state files, full disk), when that module exists."""
    try:
        from bench import fault_cases_checkpoint
    except ImportError:
        return []
    return list(fault_cases_checkpoint.cases(workdir))


def markdown(rows: list[dict]) -> str:
    lines = ["| fault injected | outcome | resumed from | state equal | message |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [r["fault"], r["outcome"], r["resumed_from"], r["state_equal"], r["message"]]
        lines.append("| " + " | ".join("" if c is None else str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="where the tiny model and run outputs go (default: a temp dir)")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from .common import write_results

    hf_logging.set_verbosity_error()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="zrl-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bench = Bench(workdir)
    rows: list[dict] = []
    for case in CASES:
        produced = case(bench)
        rows += produced if isinstance(produced, list) else [produced]
        print(f"{case.__name__}: done", flush=True)
    from bench import fault_cases_boundaries

    rows += fault_cases_boundaries.cases(bench)
    rows += checkpoint_rows(workdir / "checkpoints")
    table = markdown(rows)
    write_results("faults", {"rows": rows}, table)
    return rows


if __name__ == "__main__":
    main()
