"""The boundary cases of ``bench.faults``: reward functions passed TRL's way, plugin outputs, resumes inside a
generation buffer, shared output folders, configs, ``zrl eval`` and process isolation — each injected as a user or
a plugin author would, with what the run did. Every row has a test in ``tests/test_boundaries.py`` (or
``tests/test_resume.py``)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.faults import TINY, Bench, row


def _sleeps(prompts, completions, **columns):
    while True:
        time.sleep(0.05)


def _huge(prompts, completions, **columns):
    return [1e39] * len(completions)


def _strings(prompts, completions, **columns):
    return ["good"] * len(completions)


def _digits(prompts, completions, **columns):
    return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]


def _stuck_in_c(prompts, completions, **columns):
    time.sleep(10_000)


def _trainer(
    bench: Bench, funcs: list[Callable[..., Any]], out: str | None = None, model: str | None = None, **overrides: Any
):
    from datasets import Dataset

    from zrl_plugins import ZRLConfig, ZRLGRPOTrainer

    out = out or tempfile.mkdtemp(dir=bench.workdir)
    config = ZRLConfig(**{"output_dir": out, **TINY, **overrides})
    return ZRLGRPOTrainer(model or bench.model, funcs, args=config, train_dataset=Dataset.from_list(bench.rows))


def _outcome(action: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, str]:
    """(what happened, the message) of ``action(*args, **kwargs)``."""
    started = time.perf_counter()
    try:
        result = action(*args, **kwargs)
    except Exception as exc:
        return f"{type(exc).__name__} after {time.perf_counter() - started:.1f} s", str(exc)
    return f"ran in {time.perf_counter() - started:.1f} s: {result}", ""


def reward_functions(bench: Bench) -> list[dict]:
    rows = []
    trainer = _trainer(bench, [_sleeps], max_steps=3, verifier_timeout=1.0, verifier_max_consecutive_timeouts=2)
    rows.append(row("TRL reward function sleeping forever (verifier_timeout=1, max 2)", *_outcome(trainer.train)))
    for fault, func in (("returning 1e39", _huge), ("returning strings", _strings)):
        guarded = _trainer(bench, [func]).reward_funcs[0]
        rows.append(
            row(f"TRL reward function {fault}", *_outcome(lambda g=guarded: g(prompts=["p"], completions=["a"])))
        )
    return rows


def plugin_outputs(bench: Bench) -> list[dict]:
    from zrl_corrections.corrections import IcePop

    from zrl_plugins.framework.plugins import get_plugin_manager
    from zrl_plugins.framework.protocols import CorrectionOutput, PolicyLossOutput
    from zrl_plugins.framework.rollout_correction import checked_correction
    from zrl_plugins.trainers import loss
    from zrl_plugins.trainers.components import Selected

    old, behaviour = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-100.0, float("-inf")]])
    weights = IcePop()(old, behaviour, torch.ones(1, 2)).weights
    rows = [row("icepop on behaviour log-probs -100 and -inf", f"weights {weights.tolist()} (finite)")]
    negative = CorrectionOutput(weights=-torch.ones(1, 2))
    outcome = _outcome(checked_correction, "mine", negative, old, torch.ones(1, 2))
    rows.append(row("rollout_correction returning weights of -1", *outcome))
    doubled = CorrectionOutput(weights=torch.ones(1, 2), mask=2 * torch.ones(1, 2))
    outcome = _outcome(checked_correction, "mine", doubled, old, torch.ones(1, 2))
    rows.append(row("rollout_correction returning a mask of 2", *outcome))

    class Broadcast:
        def __call__(self, logps, old_logps, advantages, mask, ratio):
            return PolicyLossOutput(per_token_loss=-logps[:1], ratio=torch.ones_like(logps))

    logps = torch.randn(4, 5, requires_grad=True)
    args = (logps, logps.detach(), torch.ones(4, 1), torch.ones(4, 5), None)
    selected = Selected("policy_loss", "mine", Broadcast())
    outcome = _outcome(loss.policy_loss, get_plugin_manager(), selected, *args)
    rows.append(row("policy_loss returning a 1 x T per-token loss", *outcome))
    return rows


def buffered_resume(bench: Bench) -> list[dict]:
    rows = []
    for fault, options in (
        ("checkpoint inside a generation buffer (steps_per_generation=2), resumed", {"steps_per_generation": 2}),
        ("checkpoint inside num_iterations=2, resumed", {"num_iterations": 2, "beta": 0.05, "kl_penalty": "k1"}),
    ):
        options = dict(max_steps=4, save_strategy="steps", save_steps=1, per_device_train_batch_size=4, **options)
        first = _trainer(bench, [_digits], **options)
        first.train()
        resumed = _trainer(bench, [_digits], **options)
        resumed.train(resume_from_checkpoint=os.path.join(first.args.output_dir, "checkpoint-1"))
        losses = [[h["loss"] for h in t.state.log_history if "loss" in h and h["step"] >= 2] for t in (first, resumed)]
        equal = losses[0] == losses[1] and first.kl_penalty.controller.beta == resumed.kl_penalty.controller.beta
        rows.append(row(fault, f"losses at steps 2-4 {losses[1]}", resumed_from="checkpoint-1", state_equal=equal))
    return rows


def output_folders(bench: Bench) -> list[dict]:
    from zrl_plugins.trainers.run_folder import RunLock

    rows = []
    out = tempfile.mkdtemp(dir=bench.workdir)
    with RunLock(out, "run-a"):
        trainer = _trainer(bench, [_digits], out=out, max_steps=1, save_strategy="steps", save_steps=1)
        rows.append(row("a second run on an output_dir another run is writing", *_outcome(trainer.train)))
    _trainer(bench, [_digits], out=out, max_steps=3, save_strategy="steps", save_steps=1).train()
    fresh = _trainer(bench, [_digits], out=out, max_steps=2, save_strategy="steps", save_steps=1, save_total_limit=1)
    rows.append(row("a fresh run (save_total_limit=1) in a folder with an older run's checkpoint-1..3",
                    *_outcome(fresh.train)))  # fmt: skip
    weights = Path(out) / "checkpoint-1" / "model.safetensors"
    shutil.copy(Path(out) / "checkpoint-3" / "model.safetensors", weights)
    resumed = _trainer(bench, [_digits], out=out, max_steps=4, save_strategy="steps", save_steps=1)
    outcome = _outcome(resumed.train, resume_from_checkpoint=str(weights.parent))
    rows.append(row("checkpoint-1's weights replaced by another checkpoint's after it was written", *outcome))
    return rows


def configs(bench: Bench) -> list[dict]:
    from zrl_plugins import ZRLConfig

    rows = []
    for fault, overrides in (
        ("beta=-0.04", {"beta": -0.04}),
        ("temperature=0", {"temperature": 0.0}),
        ("learning_rate=nan", {"learning_rate": float("nan")}),
    ):
        config = {"output_dir": tempfile.mkdtemp(dir=bench.workdir), **TINY, **overrides}
        rows.append(row(fault, *_outcome(ZRLConfig, **config)))
    config = ZRLConfig(output_dir=tempfile.mkdtemp(dir=bench.workdir), **TINY, verifiers="last_number")
    rows.append(row("verifiers='last_number' (a string)", f"accepted as verifiers={config.verifiers}"))
    outcome = _outcome(_trainer, bench, [_digits], model="/nonexistent/model", gradient_accumulation_steps=16)
    rows.append(row("gradient_accumulation_steps=16: more prompts per step than the data set has", *outcome))
    return rows


def commands_and_isolation(bench: Bench) -> list[dict]:
    from zrl_plugins.apps.cli import main

    rows = [row("zrl eval --n 0", f"exit status {main(['eval', '--model', bench.model, '--n', '0'])}")]
    trainer = _trainer(bench, [_stuck_in_c], verifier_isolation="process", verifier_timeout=1.0)
    guarded = trainer.reward_funcs[0]
    outcome, message = _outcome(guarded, prompts=["p"], completions=["a"])
    alive = guarded.process.pid is not None
    guarded.process.stop(kill=True)
    rows.append(row("a verifier stuck in C code (time.sleep) under verifier_isolation='process', timeout 1 s",
                    f"{outcome}; worker process still running: {alive}", message))  # fmt: skip
    from zrl_math.grading import grade

    outcome = grade("\\neq 4", "4", timeout=30.0)
    rows.append(row("math_correct on \\boxed{\\neq 4} against 4", f"outcome {outcome}"))
    return rows


CASES = [reward_functions, plugin_outputs, buffered_resume, output_folders, configs, commands_and_isolation]


def cases(bench: Bench) -> list[dict]:
    rows: list[dict] = []
    for case in CASES:
        rows += case(bench)
        print(f"{case.__name__}: done", flush=True)
    return rows
