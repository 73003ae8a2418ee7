"""GSM8K / MATH-style records from a Hub data set name or a local JSON, JSONL or Parquet file, normalised to
``question`` / ``answer`` / ``level`` rows, with SimpleRL-Zoo's difficulty tiers (docs/methods.md#tasks)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..framework.errors import DataError

QUESTION_FIELDS = ("question", "problem", "prompt", "query")
ANSWER_FIELDS = ("answer", "gold", "final_answer", "solution")
# easy = GSM8K + MATH level 1; medium = MATH levels 1-4; hard = MATH levels 3-5 (SimpleRL-Zoo)
TIERS: dict[str, tuple[bool, set[int]]] = {
    "easy": (True, {1}),
    "medium": (False, {1, 2, 3, 4}),
    "hard": (False, {3, 4, 5}),
}


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced, else ``None``."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, begin = 1, i
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i].strip()
        i += 1
    return None


def gold_answer(record: dict[str, Any], field: str) -> str | None:
    """The final answer of a record: GSM8K's ``#### 42``, MATH's last ``\\boxed{}``, or the field itself."""
    value = record.get(field)
    if value is None:
        return None
    text = str(value)
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    boxed = last_boxed(text)
    return boxed if boxed is not None else text.strip()


def level_of(record: dict[str, Any]) -> int | None:
    """MATH's ``level`` ("Level 3" or 3) as an int; ``None`` when absent (e.g. GSM8K)."""
    level = record.get("level")
    if level is None:
        return None
    match = re.search(r"\d+", str(level))
    return int(match.group()) if match else None


def _read(source: str, split: str) -> Any:
    from datasets import load_dataset

    path = Path(source)
    if path.exists():
        kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(path.suffix)
        if kind is None:
            raise DataError(f"{source}: expected a .json, .jsonl or .parquet file")
        return load_dataset(kind, data_files=str(path), split="train")
    name, _, config = source.partition(":")  # "openai/gsm8k:main"
    return load_dataset(name, config or None, split=split)


def _field(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, source: str) -> str:
    if wanted:
        if wanted not in columns:
            raise DataError(f"{source} has no column {wanted!r} ({what}); columns: {columns}")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise DataError(f"{source}: no {what} column among {candidates}; columns: {columns}. Name it explicitly.")


def load_math_records(
    source: str,
    split: str = "train",
    question_field: str | None = None,
    answer_field: str | None = None,
    tier: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{"question", "answer", "level"}`` from ``source`` (a local file or ``hub_name[:config]``).

    ``tier`` keeps SimpleRL-Zoo's difficulty tier: ``easy`` (records without a level, i.e. GSM8K, plus MATH level 1),
    ``medium`` (levels 1-4) or ``hard`` (levels 3-5). Rows whose answer cannot be extracted are dropped.
    """
    if tier is not None and tier not in TIERS:
        raise DataError(f"unknown tier {tier!r}; tiers are {sorted(TIERS)}")
    dataset = _read(source, split)
    columns = list(dataset.column_names)
    q_field = _field(columns, question_field, QUESTION_FIELDS, "question", source)
    a_field = _field(columns, answer_field, ANSWER_FIELDS, "answer", source)
    rows = []
    for record in dataset:
        level = level_of(record)
        if tier is not None:
            keep_unlevelled, levels = TIERS[tier]
            if (level is None and not keep_unlevelled) or (level is not None and level not in levels):
                continue
        answer = gold_answer(record, a_field)
        if not answer:
            continue
        rows.append({"question": str(record[q_field]), "answer": answer, "level": level})
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{source}: no usable record (tier={tier!r}, question={q_field!r}, answer={a_field!r})")
    return rows
