"""Training data checked before the model loads: rows, the ``prompt`` column and its types, the columns verifiers
read. Each error names the column and the first bad row, and says what to do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import DataError
from .log_limits import shorten

# Prompt types are checked on this many rows at most: enough to catch a mis-built column, without reading a whole
# large data set into memory before training.
MAX_CHECKED_ROWS = 10_000


def column_names(dataset: Any) -> list[str] | None:
    """The columns of a ``datasets.Dataset`` or of a list of row dicts (its first row's keys); ``None`` if unknown."""
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return list(names)
    if isinstance(dataset, Sequence) and dataset and isinstance(dataset[0], Mapping):
        return list(dataset[0])
    return None


def check_training_data(dataset: Any, needed_by: Mapping[str, Sequence[str]], name: str = "train_dataset") -> None:
    """Raise :class:`DataError` if ``dataset`` is empty, has no ``prompt`` column, has a prompt that is neither a
    string nor a list of chat messages, or lacks a column a verifier reads (``needed_by``: verifier → columns).
    A data set without a length (streaming) is not checked."""
    if not hasattr(dataset, "__len__"):
        return
    if len(dataset) == 0:
        raise DataError(f"{name} is empty: nothing to train on.")
    columns = column_names(dataset)
    if columns is None:
        return
    if "prompt" not in columns:
        raise DataError(
            f"{name} has no 'prompt' column (its columns are {sorted(columns)}); generation starts from it. Rename "
            "the column that holds the prompts to 'prompt', or build it (e.g. dataset.map(...))."
        )
    for verifier, needed in needed_by.items():
        missing = [c for c in needed if c not in columns]
        if missing:
            raise DataError(
                f"verifier {verifier!r} needs the data set column(s) {missing}, which {name} lacks; its "
                f"columns are {sorted(columns)}. Rename the column or set the verifier's gold_column."
            )
    head = dataset[: min(len(dataset), MAX_CHECKED_ROWS)]  # a Dataset gives columns, a list gives rows
    prompts = head["prompt"] if isinstance(head, Mapping) else [r.get("prompt") for r in head]
    for row, prompt in enumerate(prompts):
        problem = _prompt_problem(prompt)
        if problem:
            raise DataError(
                f"row {row} of {name}: column 'prompt' {problem} ({type(prompt).__name__} "
                f"{shorten(repr(prompt), 120)}). A prompt is a string, or a list of chat messages "
                "({'role': ..., 'content': ...})."
            )


def _prompt_problem(prompt: Any) -> str | None:
    if isinstance(prompt, str):
        return None
    if isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
        if not prompt:
            return "is an empty list of messages"
        for i, message in enumerate(prompt):
            # a data set's rows share one schema: a key missing from a row reads as None there
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) or "content" not in message:
                return f"has a message {i} without a 'role' and 'content'"
        return None
    return "is neither a string nor a list of messages"
