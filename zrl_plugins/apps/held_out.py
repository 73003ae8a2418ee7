"""Held-out greedy accuracy measured inside training, on the model as the engine holds it.

Measuring at ``on_train_begin`` / ``on_train_end`` means the model is already prepared: under DeepSpeed ZeRO-3 its
parameters are gathered for generation (TRL's ``unwrap_model_for_generation``), under FSDP2 every process generates
with synchronised forwards, and with DDP each process uses its replica. Every process scores an equal slice of the
rows (padded with repeats, which are dropped), and the scores are gathered, so the result is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from transformers import TrainerCallback

from ..framework.hookspecs import hookimpl
from .evaluation import generate_completions, is_correct, prompts_and_columns
from .provenance import wilson_interval


def sharded_greedy_accuracy(
    trainer: Any,
    rows: Sequence[dict[str, Any]],
    verifier: Callable[..., list[float | None]],
    max_new_tokens: int,
    batch_size: int = 50,
) -> tuple[float, list[str]]:
    """Greedy accuracy (fraction correct, :func:`~zrl_plugins.apps.evaluation.is_correct`) of ``trainer``'s policy on
    ``rows`` over all processes; (accuracy, the completions)."""
    from accelerate.utils import gather_object
    from trl.models import unwrap_model_for_generation

    accelerator = trainer.accelerator
    world, rank = accelerator.num_processes, accelerator.process_index
    per_process = -(-len(rows) // world)
    indices = list(range(rank * per_process, (rank + 1) * per_process))
    mine = [rows[i % len(rows)] for i in indices]  # equal slices: FSDP2 and ZeRO-3 generate in lock-step
    prompts, columns = prompts_and_columns(mine)
    with unwrap_model_for_generation(trainer.model_wrapped, accelerator) as model:
        completions = generate_completions(
            model, trainer.processing_class, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    scores = verifier(prompts=prompts, completions=completions, **columns)
    scored = zip(indices, scores, completions, strict=True)
    results = gather_object([(i, float(is_correct(s)), c) for i, s, c in scored])
    kept = sorted({i: (s, c) for i, s, c in results if i < len(rows)}.items())
    return sum(s for _, (s, _) in kept) / len(rows), [c for _, (_, c) in kept]


class HeldOutAccuracy(TrainerCallback):
    """Greedy accuracy on held-out rows when training starts (unless ``before`` is given) and when it ends, and with
    ``every``, every that many optimizer steps during training — the held-out rows and each of ``benchmarks`` (name
    to rows, graded by ``benchmark_verifier``) — logged as ``eval/held_out/accuracy`` and
    ``eval/<benchmark>/pass@1`` in the next metrics TRL logs (through ``zrl_on_log``, so they sit in the log history
    at their step and in ``training.png``).

    Results are in ``self.before`` / ``self.after`` (floats), ``self.completions`` (the last evaluation's) and
    ``self.history`` (step → metrics of each evaluation)."""

    def __init__(
        self,
        trainer: Any,
        rows: Sequence[dict[str, Any]],
        verifier: Callable[..., list[float | None]],
        max_new_tokens: int,
        before: float | None = None,
        log: Callable[[str], None] = print,
        every: int | None = None,
        benchmarks: dict[str, Sequence[dict[str, Any]]] | None = None,
        benchmark_verifier: Callable[..., list[float | None]] | None = None,
    ):
        self.trainer, self.rows, self.verifier, self.max_new_tokens = trainer, rows, verifier, max_new_tokens
        self.before, self.after = before, None
        self.completions: list[str] = []
        self.log = log
        self.every, self.benchmarks = every, dict(benchmarks or {})
        self.benchmark_verifier = benchmark_verifier or verifier
        self.history: dict[int, dict[str, float]] = {}
        self.pending: dict[str, float] = {}
        if every is not None or self.benchmarks:
            trainer.zrl_pm.register_plugin(self, name=f"held-out-{id(self)}")  # its zrl_on_log adds the metrics

    def evaluate(self, step: int) -> dict[str, float]:
        """The held-out rows and every benchmark, greedy, on the model as it is now."""
        metrics = {"eval/held_out/accuracy": self._measure(f"at step {step}")} if self.rows else {}
        for name, rows in self.benchmarks.items():
            accuracy, _ = sharded_greedy_accuracy(self.trainer, rows, self.benchmark_verifier, self.max_new_tokens)
            metrics[f"eval/{name}/pass@1"] = accuracy
        self.history[step] = metrics
        self.pending.update(metrics)
        return metrics

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            self.evaluate(state.global_step)

    @hookimpl
    def zrl_on_log(self, trainer: Any, logs: dict[str, float]) -> None:
        if trainer is self.trainer and self.pending and "loss" in logs:  # a training step's metrics
            logs.update(self.pending)
            self.pending = {}

    def _measure(self, when: str) -> float:
        accuracy, self.completions = sharded_greedy_accuracy(
            self.trainer, self.rows, self.verifier, self.max_new_tokens
        )
        if self.trainer.accelerator.is_main_process:
            low, high = wilson_interval(accuracy * len(self.rows), len(self.rows))
            self.log(
                f"held-out greedy accuracy {when}: {accuracy:.3f} (95% CI {low:.3f}-{high:.3f}, "
                f"{len(self.rows)} problems)"
            )
        return accuracy

    def on_train_begin(self, args, state, control, **kwargs):
        if self.before is None:
            self.before = self._measure("before")
        for name, rows in self.benchmarks.items():
            accuracy, _ = sharded_greedy_accuracy(self.trainer, rows, self.benchmark_verifier, self.max_new_tokens)
            self.history.setdefault(state.global_step, {})[f"eval/{name}/pass@1"] = accuracy

    def on_train_end(self, args, state, control, **kwargs):
        self.after = self._measure("after")
        final = {"eval/held_out/accuracy": self.after}
        for name, rows in self.benchmarks.items():
            accuracy, _ = sharded_greedy_accuracy(self.trainer, rows, self.benchmark_verifier, self.max_new_tokens)
            final[f"eval/{name}/pass@1"] = accuracy
        self.history[state.global_step] = final
        if self.every:  # the last point of the curve, at the last step
            for entry in reversed(state.log_history):
                if entry.get("step") == state.global_step and "loss" in entry:
                    entry.update(final)
                    break
