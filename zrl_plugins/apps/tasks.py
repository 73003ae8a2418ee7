"""Generated tasks that need no download, deterministic per seed: multi-step arithmetic word problems with a
controllable number of steps, and Countdown (reach a target with the given numbers).

Rows carry ``question`` and ``answer`` (a string); Countdown rows also ``numbers`` and ``target`` for the
``countdown`` verifier. :func:`with_prompts` turns questions into prompts with a named template.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

NAMES = ("Ann", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jia")
ITEMS = ("apples", "marbles", "stickers", "coins", "books", "shells", "pencils", "cards")


def word_problems(n: int, steps: int = 2, seed: int = 0, max_start: int = 30) -> list[dict[str, Any]]:
    """``n`` problems of ``steps`` operations (1 = easy ... 5 = hard) on a running count; answers are integers >= 0.

    "Ann has 12 apples. She buys 5 more. Then she gives away 3. Then she doubles what she has. How many ...?"
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rng = random.Random(f"word_problems-{seed}-{steps}")
    rows = []
    for _ in range(n):
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        count = rng.randint(2, max_start)
        sentences = [f"{name} has {count} {item}."]
        for step in range(steps):
            lead = "She" if step == 0 else "Then she"
            kind = rng.choice(("buy", "give", "double", "split") if count % 2 == 0 else ("buy", "give", "double"))
            if kind == "buy":
                k = rng.randint(1, 20)
                count += k
                sentences.append(f"{lead} buys {k} more.")
            elif kind == "give" and count > 1:
                k = rng.randint(1, count - 1)
                count -= k
                sentences.append(f"{lead} gives away {k}.")
            elif kind == "split":
                count //= 2
                sentences.append(f"{lead} gives half of them to a friend.")
            else:
                count *= 2
                sentences.append(f"{lead} doubles what she has.")
        sentences.append(f"How many {item} does {name} have now?")
        rows.append({"question": " ".join(sentences), "answer": str(count), "steps": steps})
    return rows


def countdown(n: int, numbers: int = 3, seed: int = 0, max_number: int = 25) -> list[dict[str, Any]]:
    """``n`` Countdown problems: reach ``target`` with each of ``numbers`` integers used exactly once and + − × ÷.

    Targets are built from a random expression over the numbers, so every problem is solvable with integer
    intermediate results.
    """
    rng = random.Random(f"countdown-{seed}-{numbers}")
    rows = []
    while len(rows) < n:
        values = [rng.randint(1, max_number) for _ in range(numbers)]
        order = values[:]
        rng.shuffle(order)
        total, expression = order[0], str(order[0])
        for value in order[1:]:
            op = rng.choice("+-*/")
            if op == "/" and (value == 0 or total % value):
                op = "+"
            total = {"+": total + value, "-": total - value, "*": total * value, "/": total // value}[op]
            expression = f"({expression} {op} {value})"
        if total <= 0:
            continue
        question = (
            f"Using the numbers {values}, create an equation that equals {total}. You can use basic arithmetic "
            "operations (+, -, *, /) and each number exactly once. Write the final equation, e.g. (1 + 2) * 3 = 9."
        )
        rows.append(
            {"question": question, "answer": str(total), "numbers": values, "target": total, "solution": expression}
        )
    return rows


def with_prompts(rows: Sequence[dict[str, Any]], template: Any) -> list[dict[str, Any]]:
    """Rows with a ``prompt`` built by ``template`` (a :class:`~zrl_plugins.sdk.PromptTemplate`)."""
    return [{**row, "prompt": template(row["question"])} for row in rows]


def addition_problems(max_operand: int = 20) -> list[dict[str, Any]]:
    """Every ``a + b`` with ``0 <= a, b <= max_operand`` (the demo's task), in a fixed order."""
    return [
        {"question": f"What is {a} + {b}?", "answer": str(a + b)}
        for a in range(max_operand + 1)
        for b in range(max_operand + 1)
    ]
