"""The verifiers: ``math_correct`` (mathematical equivalence with the gold answer) and ``boxed_format``."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Literal

from zrl_plugins.framework.log_limits import shorten
from zrl_plugins.sdk import completion_text

from .extract import EXTRACTION_MODES, ExtractionMode, boxed_spans, extract_answer
from .grading import Grader

logger = logging.getLogger(__name__)

RewardMode = Literal["correct_only", "format_aware"]


class MathCorrect:
    """1.0 when the completion's final answer equals the gold answer mathematically (math-verify), else 0.0.

    Equivalence is math-verify's: LaTeX and plain expressions, ``\\boxed{}``, fractions vs decimals, sets (order
    free), intervals (open/closed ends matter), equations vs values (``x=3`` equals ``3``), units stripped,
    ``1{,}000`` = ``1000``. Percentage rule (math-verify's): a gold ``50\\%`` is matched by ``50\\%``, ``50`` and
    ``0.5``.

    Args:
        extraction: where the answer is taken from: ``boxed`` (last ``\\boxed{}``), ``answer_is`` ("the answer is
            ..."), ``last_number``, or ``auto`` (the first of those that matches, in that order).
        gold_column: data set column with the gold answer.
        mode: ``correct_only`` (SimpleRL-Zoo's default: 1 correct / 0 otherwise) or ``format_aware`` (1 correct,
            ``wrong_reward`` for a wrong but extractable answer, ``no_answer_reward`` when nothing is extractable).
        wrong_reward, no_answer_reward: the ``format_aware`` values.
        timeout: seconds per item; an item that runs out gets ``None`` (not scored; ``format_aware``:
            ``wrong_reward``, since its answer was extracted but not shown correct) and counts in ``verifier/timeouts``.
        num_workers: grading processes (``None`` = CPU count, ``0`` = in process).
        memory_limit_mb: address space of each grading process (``RLIMIT_AS``; a worker uses about 140 MB before
            grading). An item that needs more gets ``None`` (not scored), counts in ``verifier/math_correct/oom``,
            and its worker is replaced. ``None``: no limit; not applied with ``num_workers=0``.

    An item whose grading worker died (segfault, out of memory) gets ``None`` and counts in ``verifier/crashes``.
    Grading workers that cannot start raise :class:`~zrl_math.workers.WorkerStartError` (never a silent ``None``).

    A gold answer that cannot be parsed gives ``None`` for its rows, one warning naming the row, and counts in
    ``verifier/unparsable_gold``. Counts are logged through TRL's ``log_metric`` when the trainer provides it.
    """

    def __init__(
        self,
        extraction: ExtractionMode = "auto",
        gold_column: str = "answer",
        mode: RewardMode = "correct_only",
        wrong_reward: float = -0.5,
        no_answer_reward: float = -1.0,
        timeout: float = 5.0,
        num_workers: int | None = None,
        memory_limit_mb: int | None = 2048,
    ):
        if extraction not in EXTRACTION_MODES:
            raise ValueError(f"extraction must be one of {EXTRACTION_MODES}, got {extraction!r}")
        if mode not in ("correct_only", "format_aware"):
            raise ValueError(f"mode must be 'correct_only' or 'format_aware', got {mode!r}")
        self.extraction = extraction
        self.gold_column = gold_column
        self.mode = mode
        self.rewards = {
            "correct": 1.0,
            "wrong": wrong_reward if mode == "format_aware" else 0.0,
            "no_answer": no_answer_reward if mode == "format_aware" else 0.0,
            "error": 0.0,
            # format_aware: an extractable answer that runs out of time is not correct, and was well-formatted:
            # the wrong-answer reward (as None it escaped the penalty). correct_only: not scored.
            "timeout": wrong_reward if mode == "format_aware" else None,
            "crashed": None,
            "unparsable_gold": None,
            "oom": None,
        }
        self.grader = Grader(timeout=timeout, num_workers=num_workers, memory_limit_mb=memory_limit_mb)
        self.totals: Counter[str] = Counter()
        self._warned_golds: set[str] = set()
        self.__name__ = "math_correct"
        self.required_columns = (gold_column,)  # checked against the data set before training starts

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        if self.gold_column not in columns:
            present = sorted(k for k in columns if k not in ("trainer_state", "log_extra", "log_metric"))
            raise KeyError(
                f"verifier 'math_correct' needs the gold answer column {self.gold_column!r}; columns present: "
                f"{present}. Set verifier_kwargs={{'math_correct': {{'gold_column': ...}}}}."
            )
        golds = columns[self.gold_column]
        answers = [extract_answer(completion_text(c), self.extraction) for c in completions]
        outcomes = self.grader.grade_many(list(zip(answers, golds, strict=True)))
        counts = Counter(outcomes)
        self.totals.update(counts)
        for row, (outcome, gold) in enumerate(zip(outcomes, golds, strict=True)):
            if outcome == "unparsable_gold" and str(gold) not in self._warned_golds:
                self._warned_golds.add(str(gold))
                logger.warning(
                    "math_correct: the gold answer of row %d (%s) cannot be parsed; its completions get reward None "
                    "(not scored). Fix the data set's %r column.",
                    row,
                    shorten(repr(gold)),
                    self.gold_column,
                )
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            log_metric("verifier/timeouts", float(counts["timeout"]))
            log_metric("verifier/unparsable_gold", float(counts["unparsable_gold"]))
            log_metric("verifier/errors", float(counts["error"]))
            log_metric("verifier/crashes", float(counts["crashed"]))
            log_metric(f"verifier/{self.__name__}/oom", float(counts["oom"]))
        return [self.rewards[o] for o in outcomes]

    def answers(self, completions: list[Any]) -> list[str | None]:
        """The final answer of each completion, as extracted for grading (``zrl eval``'s majority vote)."""
        return [extract_answer(completion_text(c), self.extraction) for c in completions]

    def equivalent(self, pairs: list[tuple[str, str]]) -> list[bool]:
        """Whether each ``(answer, other)`` pair is one answer, by math-verify with ``other`` as the gold (so under the
        same timeouts and worker processes as grading)."""
        return [outcome == "correct" for outcome in self.grader.grade_many(list(pairs))]

    def close(self) -> None:
        """Stop the grading worker processes (they also stop at interpreter exit)."""
        self.grader.close()


class BoxedFormat:
    """1.0 when the completion contains exactly one ``\\boxed{...}`` and its braces are balanced, else 0.0."""

    def __init__(self) -> None:
        self.__name__ = "boxed_format"

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        rewards: list[float | None] = []
        for completion in completions:
            boxes = boxed_spans(completion_text(completion))  # spans, not contents: nested boxes would copy O(n²)
            rewards.append(float(len(boxes) == 1 and boxes[0][1] is not None))
        return rewards
