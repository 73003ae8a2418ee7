"""Checks on the training data that need the trainer: the columns its reward functions read (checked with the rest
of the data before the model loads, :mod:`zrl_plugins.framework.data_checks`) and, once the tokenizer and the model
are there, whether the prompts leave room for the completions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from trl.trainer.utils import get_callable_name

from ..framework.errors import DataError
from ..framework.protocols import NeedsColumns
from ..framework.verifier_guard import NamedVerifier


def verifier_columns(reward_funcs: Sequence[Any]) -> dict[str, tuple[str, ...]]:
    """Data set columns each reward function reads (a verifier's ``required_columns``), by TRL's name for it."""
    needed = {}
    for func in reward_funcs:
        verifier = func.verifier if isinstance(func, NamedVerifier) else func
        if isinstance(verifier, NeedsColumns):
            needed[get_callable_name(func)] = tuple(verifier.required_columns)
    return needed


def check_prompt_lengths(
    dataset: Any,
    tokenize_prompts: Callable[[list[Any]], tuple[Any, ...]] | None,
    context: int | None,
    max_completion_length: int,
    sample: int = 256,
) -> None:
    """The longest of the first ``sample`` prompts plus ``max_completion_length`` fits the model's ``context`` (not
    checked without a tokenizer function, a known context, a length or a ``prompt`` column)."""
    if context is None or tokenize_prompts is None or not hasattr(dataset, "__len__") or len(dataset) == 0:
        return
    if "prompt" not in (getattr(dataset, "column_names", None) or []):
        return
    rows = min(len(dataset), sample)
    prompt_ids, _, _ = tokenize_prompts([dataset[i]["prompt"] for i in range(rows)])
    longest = max(range(rows), key=lambda i: len(prompt_ids[i]))
    if len(prompt_ids[longest]) + max_completion_length > context:
        raise DataError(
            f"row {longest} of train_dataset has a prompt of {len(prompt_ids[longest])} tokens; with "
            f"max_completion_length={max_completion_length} that exceeds the model's context of {context} "
            "tokens. Shorten or filter the prompts, or lower max_completion_length."
        )


def check_enough_prompts(dataset: Any, args: Any) -> None:
    """A data set smaller than one generation batch yields no batch at all: TRL's sampler drops an incomplete one,
    and training would end after 0 steps with exit status 0."""
    if not hasattr(dataset, "__len__"):
        return
    needed = args.generation_batch_size // args.num_generations
    if len(dataset) < needed:
        raise DataError(
            f"train_dataset has {len(dataset)} prompts; one generation batch takes {needed} "
            f"(per_device_train_batch_size {args.per_device_train_batch_size} x {args.world_size} processes x "
            f"steps_per_generation {args.steps_per_generation} / num_generations {args.num_generations}), so not a "
            "single step would train. Add prompts, or lower per_device_train_batch_size or gradient_accumulation_steps."
        )
