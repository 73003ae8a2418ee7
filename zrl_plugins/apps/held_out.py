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
    """Greedy accuracy on held-out rows when training starts (unless ``before`` is given) and when it ends.

    Results are in ``self.before`` / ``self.after`` (floats) and ``self.completions`` (the last evaluation's)."""

    def __init__(
        self,
        trainer: Any,
        rows: Sequence[dict[str, Any]],
        verifier: Callable[..., list[float | None]],
        max_new_tokens: int,
        before: float | None = None,
        log: Callable[[str], None] = print,
    ):
        self.trainer, self.rows, self.verifier, self.max_new_tokens = trainer, rows, verifier, max_new_tokens
        self.before, self.after = before, None
        self.completions: list[str] = []
        self.log = log

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

    def on_train_end(self, args, state, control, **kwargs):
        self.after = self._measure("after")
