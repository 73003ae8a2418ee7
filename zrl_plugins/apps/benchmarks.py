"""Math benchmarks by the names papers use, read from their Hub data sets or local files in the same schema, as
``question`` / ``answer`` rows for ``zrl eval --benchmarks`` (and ``--suite simplerl_zoo``).

Each benchmark names its Hub data set, split and the columns its question and gold answer may be in (the schemas of
the data set cards). The gold goes through :func:`~zrl_plugins.apps.loaders.gold_answer`: GSM8K's ``#### 42``, a
MATH solution's last ``\\boxed{}``, or the answer column as it is; OlympiadBench's one-element answer lists are
unwrapped, and several answers are joined as one tuple (``1, 2``), as peers' harnesses do. ``name=path`` reads a
local JSON / JSONL / Parquet file in the benchmark's schema instead (offline, and how the tests run:
``tests/data/benchmarks/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..framework.errors import ConfigError, DataError
from .loaders import _read, gold_answer


@dataclass(frozen=True)
class Benchmark:
    name: str
    source: str  # Hub data set (``name[:config]``)
    split: str
    questions: tuple[str, ...]  # the question column, the first of these present
    answers: tuple[str, ...]  # the gold answer column, likewise


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("gsm8k", "openai/gsm8k:main", "test", ("question",), ("answer",)),
        Benchmark("math500", "HuggingFaceH4/MATH-500", "test", ("problem",), ("answer", "solution")),
        Benchmark("minerva", "math-ai/minervamath", "test", ("question", "problem"), ("answer", "solution")),
        Benchmark("olympiadbench", "math-ai/olympiadbench", "test", ("question",), ("final_answer", "answer")),
        Benchmark("aime24", "HuggingFaceH4/aime_2024", "train", ("problem",), ("answer",)),
        Benchmark("amc23", "math-ai/amc23", "test", ("question", "problem"), ("answer",)),
    )
}


@dataclass(frozen=True)
class Suite:
    """A paper's evaluation table: its benchmarks and how it generated (used where the command line is silent)."""

    benchmarks: tuple[str, ...]
    template: str
    template_kwargs: dict[str, Any]
    max_new_tokens: int  # greedy pass@1 (add --k for samples)


SUITES: dict[str, Suite] = {
    # SimpleRL-Zoo (Zeng et al. 2025), its evaluation scripts (examples/simplelr_math_eval, Qwen2.5-Math's harness):
    # the six benchmarks and their average, greedy (temperature 0, top-p 1), up to 16,000 new tokens, the
    # "qwen-boxed" prompt: system "You are a helpful assistant.", the question and the boxed instruction as the user
    "simplerl_zoo": Suite(
        ("gsm8k", "math500", "minerva", "olympiadbench", "aime24", "amc23"),
        template="chat_boxed",
        template_kwargs={"system": "You are a helpful assistant."},
        max_new_tokens=16_000,
    ),
}


def selected(benchmarks: str | None, suite: str | None) -> list[tuple[str, str | None]]:
    """``(name, local path or None)`` for ``--benchmarks a,b=path`` and/or ``--suite``; unknown names list the
    known ones."""
    chosen: list[tuple[str, str | None]] = []
    if suite is not None:
        if suite not in SUITES:
            raise ConfigError(f"unknown suite {suite!r}; suites: {', '.join(SUITES)}")
        chosen += [(name, None) for name in SUITES[suite].benchmarks]
    for item in (benchmarks or "").split(","):
        if not item.strip():
            continue
        name, _, path = item.strip().partition("=")
        if name not in BENCHMARKS:
            raise ConfigError(f"unknown benchmark {name!r}; benchmarks: {', '.join(BENCHMARKS)} (or name=file)")
        chosen = [c for c in chosen if c[0] != name] + [(name, path or None)]
    return chosen


def _column(columns: list[str], candidates: tuple[str, ...], what: str, benchmark: Benchmark, where: str) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise DataError(
        f"{benchmark.name} from {where}: no {what} column; expected one of {list(candidates)}, found {columns}"
    )


def _gold(record: dict[str, Any], column: str) -> str | None:
    value = record.get(column)
    if isinstance(value, list | tuple):  # OlympiadBench: ["$\\frac{1}{2}$"]; several answers: one tuple "1, 2"
        parts = [str(v).strip().strip("$").strip() for v in value]
        value = ", ".join(parts) if len(parts) > 1 else (f"${parts[0]}$" if parts else None)
        record = {**record, column: value}
    return gold_answer(record, column) if value is not None else None


def load_benchmark(name: str, path: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """The benchmark's rows ``{"question", "answer", "benchmark"}`` (the first ``limit``, in the data set's order)."""
    benchmark = BENCHMARKS[name]
    where = path or f"{benchmark.source} ({benchmark.split})"
    dataset = _read(path or benchmark.source, benchmark.split)
    columns = list(dataset.column_names)
    question = _column(columns, benchmark.questions, "question", benchmark, where)
    answer = _column(columns, benchmark.answers, "answer", benchmark, where)
    rows = []
    for record in dataset:
        gold = _gold(record, answer)
        if gold:
            rows.append({"question": str(record[question]), "answer": gold, "benchmark": name})
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{name} from {where}: no record with a usable answer in column {answer!r}")
    return rows
