"""The core's one built-in verifier, ``last_number``: enough for generated arithmetic tasks and the demo.

Mathematical equivalence (LaTeX, ``\\boxed{}``, fractions, sets...) is the ``zrl-math`` plugin's ``math_correct``.
"""

from __future__ import annotations

import math
import re
from typing import Any

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (thousands separators allowed), or ``None``."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    try:
        return float(matches[-1].replace(",", ""))
    except ValueError:
        return None


def completion_text(completion: Any) -> str:
    """Text of a completion given as a string or as a list of chat messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


class LastNumberVerifier:
    """1.0 when the last number in the completion equals the gold answer (within ``tolerance``), else 0.0.

    Returns ``None`` for a row whose gold answer is missing or not a number.

    Args:
        gold_column: the data set column holding the gold answer.
        tolerance: absolute tolerance of the comparison.
    """

    def __init__(self, gold_column: str = "answer", tolerance: float = 1e-6):
        self.gold_column = gold_column
        self.tolerance = tolerance
        self.__name__ = "last_number"  # TRL names reward functions by __name__
        self.required_columns = (gold_column,)  # checked against the data set before training starts

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        if self.gold_column not in columns:
            raise KeyError(
                f"verifier 'last_number' needs the data set column {self.gold_column!r} (the gold answer); "
                f"columns present: {sorted(k for k in columns if not k.startswith(('trainer_', 'log_')))}"
            )
        rewards: list[float | None] = []
        for completion, gold in zip(completions, columns[self.gold_column], strict=True):
            gold_value = last_number(str(gold)) if gold is not None else None
            if gold_value is None or math.isnan(gold_value):
                rewards.append(None)
                continue
            predicted = last_number(completion_text(completion))
            rewards.append(float(predicted is not None and abs(predicted - gold_value) <= self.tolerance))
        return rewards

    def answers(self, completions: list[Any]) -> list[str | None]:
        """The last number of each completion, written one way (``3.0`` and ``3`` alike), for majority votes."""
        numbers = [last_number(completion_text(c)) for c in completions]
        return [None if x is None or math.isnan(x) else format(x, ".12g") for x in numbers]


_EQUATION_CHARS = re.compile(r"^[\d+\-*/().\s]+$")


def _evaluate(expression: str) -> float | None:
    """Value of an arithmetic expression made only of integers, + − × ÷ and parentheses (else ``None``)."""
    if not _EQUATION_CHARS.match(expression) or len(expression) > 200:
        return None
    try:
        return float(eval(expression, {"__builtins__": {}}, {}))
    except (SyntaxError, ZeroDivisionError, TypeError, ValueError, OverflowError, MemoryError, RecursionError):
        return None


class CountdownVerifier:
    """1.0 when the completion's last equation uses each given number exactly once and evaluates to the target.

    The equation is the last line (or ``<answer>`` content) containing digits; text after ``=`` is ignored.
    Returns 0.0 when no valid equation is found, ``None`` for rows without ``numbers``/``target``.

    Args:
        numbers_column, target_column: the data set columns with the numbers and the target.
    """

    def __init__(self, numbers_column: str = "numbers", target_column: str = "target"):
        self.numbers_column, self.target_column = numbers_column, target_column
        self.__name__ = "countdown"
        self.required_columns = (numbers_column, target_column)

    def score(self, text: str, numbers: list[int], target: float) -> float:
        answer = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
        candidates = [answer[-1]] if answer else [line for line in text.splitlines() if re.search(r"\d", line)]
        if not candidates:
            return 0.0
        expression = candidates[-1].split("=")[0].strip().replace("×", "*").replace("÷", "/")
        used = sorted(int(x) for x in re.findall(r"\d+", expression))
        value = _evaluate(expression)
        return float(used == sorted(numbers) and value is not None and abs(value - target) < 1e-6)

    def __call__(self, prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        rewards: list[float | None] = []
        for completion, numbers, target in zip(
            completions, columns[self.numbers_column], columns[self.target_column], strict=True
        ):
            if numbers is None or target is None:
                rewards.append(None)
            else:
                rewards.append(self.score(completion_text(completion), list(numbers), float(target)))
        return rewards
