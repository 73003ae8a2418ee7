"""Checks on the training data that fail before any generation, with a message saying what to change."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..framework.errors import DataError
from ..framework.protocols import NeedsColumns
from ..framework.verifier_guard import NamedVerifier


def check_training_data(
    dataset: Any,
    reward_funcs: Sequence[Any],
    reward_func_names: Sequence[str],
    tokenize_prompts: Callable[[list[Any]], tuple[Any, ...]] | None,
    context: int | None,
    max_completion_length: int,
    sample: int = 256,
) -> None:
    """Non-empty, every column a verifier requires present, and (when ``tokenize_prompts`` and the model's
    ``context`` are given) the longest of the first ``sample`` prompts plus ``max_completion_length`` fits."""
    if not hasattr(dataset, "__len__"):
        return  # a streaming data set: nothing to check without consuming it
    if len(dataset) == 0:
        raise DataError("train_dataset is empty: nothing to train on.")
    columns = set(dataset.column_names or [])
    for func, name in zip(reward_funcs, reward_func_names, strict=True):
        verifier = func.verifier if isinstance(func, NamedVerifier) else func
        needed = verifier.required_columns if isinstance(verifier, NeedsColumns) else ()
        missing = [c for c in needed if c not in columns]
        if missing:
            raise DataError(
                f"verifier {name!r} needs the data set column(s) {missing}, which train_dataset lacks; its "
                f"columns are {sorted(columns)}. Rename the column or set the verifier's gold_column."
            )
    if context is None or tokenize_prompts is None or "prompt" not in columns:
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
