"""Token-budget micro-batches (``max_tokens_per_microbatch``): one micro-batch's forward + backward in parts of at
most a budget of real tokens, with exactly the gradient of the unsplit micro-batch.

The split (:func:`plan`) follows verl's ``rearrange_micro_batches``: the fewest parts that fit the budget, the same
number on every process (ZeRO-3 / FSDP gather parameters in every forward, DDP reduces in the last backward), the
sequences balanced over them longest first. A sequence longer than the budget gets a part of its own.

Why the gradient is exact, whatever the normalizer: the loss of part *k* is the whole micro-batch's objective, in
which part *k*'s rows are live, the rows of earlier parts are their (detached) results and the rows of later parts
placeholders (:func:`assemble`). Per-token losses are row-wise and every aggregation — sequence mean, token mean,
``dr_grpo``'s constant, ``num_items_in_batch`` — is linear in them with denominators from the whole micro-batch's
mask, so the gradient of part *k*'s loss with respect to its rows is the full objective's, and the placeholders
never reach a gradient. The last part's loss has every row real: its value, metrics and controller observations are
the unsplit micro-batch's. What is not row-wise is refused (:func:`check`): TRL's top-entropy quantile mask (a
threshold over all rows) and a router aux loss (over all tokens).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer

from ..framework.errors import ConfigError
from .loss import CompletionForward

logger = logging.getLogger(__name__)


def balanced_parts(lengths: list[int], parts: int) -> list[list[int]]:
    """Indices of ``lengths`` in ``parts`` groups of near-equal token sums: longest first, each into the lightest
    group (none empty when ``parts ≤ len(lengths)``); each group in index order."""
    groups: list[list[int]] = [[] for _ in range(parts)]
    sums = [0] * parts
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        lightest = min(range(parts), key=lambda g: (sums[g], len(groups[g])))
        groups[lightest].append(index)
        sums[lightest] += lengths[index]
    return [sorted(group) for group in groups]


def parts_needed(lengths: list[int], budget: int) -> int:
    """The fewest balanced parts in which every part fits ``budget`` tokens (or is one over-long sequence)."""
    count = len(lengths)
    for parts in range(min(count, max(1, math.ceil(sum(lengths) / budget))), count + 1):
        groups = balanced_parts(lengths, parts)
        if all(len(g) == 1 or sum(lengths[i] for i in g) <= budget for g in groups):
            return parts
    return count


def plan(lengths: list[int], budget: int, reduce_max: Callable[[int], int]) -> list[list[int]]:
    """The parts of this process's micro-batch: as many as the process that needs the most (``reduce_max``)."""
    parts = min(reduce_max(parts_needed(lengths, budget)), len(lengths))
    return balanced_parts(lengths, parts)


def select_rows(inputs: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    """The rows ``rows`` of TRL's batch dict (tensors and lists with one entry per sequence; scalars as they are)."""
    size = len(inputs["completion_ids"])
    index = torch.tensor(rows, device=inputs["completion_ids"].device)
    selected = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.size(0) == size:
            selected[key] = value.index_select(0, index)
        elif isinstance(value, list) and len(value) == size:
            selected[key] = [value[i] for i in rows]
        else:
            selected[key] = value
    return selected


def placeholders(inputs: dict[str, Any]) -> CompletionForward:
    """Stand-ins for rows not computed yet: finite, detached, and never in a gradient (see the module docstring)."""
    shape = inputs["completion_ids"].shape
    logps = inputs.get("old_per_token_logps")
    logps = torch.zeros(shape, device=inputs["completion_ids"].device) if logps is None else logps.detach().float()
    values = inputs.get("old_values")
    return CompletionForward(
        logps=logps,
        entropies=torch.zeros_like(logps),
        values=None if values is None else values.detach().float(),
    )


def assemble(whole: CompletionForward, rows: list[int], part: CompletionForward) -> CompletionForward:
    """``whole`` with the rows ``rows`` replaced by ``part`` (differentiable in ``part``)."""
    index = torch.tensor(rows, device=whole.logps.device)

    def put(into: torch.Tensor | None, values: torch.Tensor | None) -> torch.Tensor | None:
        if values is None:
            return None
        return into.to(values.dtype).index_put((index,), values)

    return dataclasses.replace(
        whole,
        logps=put(whole.logps, part.logps),
        entropies=put(whole.entropies, part.entropies),
        values=put(whole.values, part.values),
    )


def detached(forward: CompletionForward) -> CompletionForward:
    def cut(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.detach()

    return dataclasses.replace(
        forward, logps=cut(forward.logps), entropies=cut(forward.entropies), values=cut(forward.values)
    )


def check(trainer: Any) -> None:
    """Refuse what a split micro-batch cannot reproduce exactly, before anything trains."""
    args = trainer.args
    if args.max_tokens_per_microbatch is None:
        return
    problems = []
    if trainer.is_deepspeed_enabled:
        problems.append("DeepSpeed (its engine steps inside the backward; use FSDP2 or DDP)")
    if getattr(trainer, "top_entropy_quantile", 1.0) < 1.0:
        problems.append("top_entropy_quantile < 1 (its threshold is a quantile over all rows)")
    if trainer.aux_loss_enabled:
        problems.append("a MoE router aux loss (computed over all tokens of the micro-batch)")
    if getattr(trainer.accelerator, "parallelism_config", None) is not None and getattr(
        trainer.accelerator.parallelism_config, "cp_enabled", False
    ):
        problems.append("context parallelism")
    if problems:
        raise ConfigError(
            "max_tokens_per_microbatch splits a micro-batch with the exact gradient of the whole, which cannot be "
            f"kept with {'; '.join(problems)}. Set max_tokens_per_microbatch=None (and bound memory with "
            "per_device_train_batch_size)."
        )


class TokenBudgetSteps(Trainer):
    """Sits between ``GRPOTrainer`` and ``Trainer`` in the MRO: TRL's ``training_step`` (step counting, timing)
    calls this one, which runs the micro-batch in token-budget parts when ``max_tokens_per_microbatch`` is set."""

    _warned_over_budget = False

    def training_step(self, model, inputs, num_items_in_batch=None):
        budget = self.args.max_tokens_per_microbatch
        if budget is None:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()
        return self._backward_in_parts(model, self._prepare_inputs(inputs), budget)

    def _backward_in_parts(self, model: Any, inputs: dict[str, Any], budget: int) -> torch.Tensor:
        """Forward + backward of the prepared micro-batch ``inputs`` in token-budget parts; the micro-batch's loss."""
        lengths = (inputs["prompt_mask"].sum(1) + inputs["completion_mask"].sum(1)).tolist()
        if max(lengths) > budget and not TokenBudgetSteps._warned_over_budget:
            TokenBudgetSteps._warned_over_budget = True
            logger.warning(
                "max_tokens_per_microbatch=%d: a sequence of %d tokens is longer than the budget; it gets a part of "
                "its own (warned once)",
                budget,
                max(lengths),
            )
        parts = plan(lengths, budget, self._max_over_processes)
        whole = placeholders(inputs)
        loss = None
        for k, rows in enumerate(parts):
            last = k == len(parts) - 1
            # DDP / FSDP2 reduce in the last part's backward only (the Trainer already holds the sync off between
            # gradient-accumulation steps)
            hold = last or not self.accelerator.sync_gradients
            with contextlib.nullcontext() if hold else self.accelerator.no_sync(model):
                with self.compute_loss_context_manager():
                    part = self._forward_completions(model, select_rows(inputs, rows))
                    loss = self._loss_from_forward(assemble(whole, rows, part), inputs, "train", record=last)
                if not self.loss_is_scaled_for_ga:  # as the Trainer's own step (TRL's loss is already scaled)
                    loss = loss / self.current_gradient_accumulation_steps
                self.accelerator.backward(loss)
            whole = assemble(whole, rows, detached(part))
        self._metrics["train"]["microbatch_parts"].append(float(len(parts)))
        return loss.detach()

    def _max_over_processes(self, value: int) -> int:
        if self.accelerator.num_processes == 1:
            return value
        return int(self.accelerator.gather(torch.tensor([value], device=self.accelerator.device)).max().item())
