"""Built-in generated tasks: no download, seeded, with held-out splits that share no problem with training."""

from __future__ import annotations

import itertools
import random
from typing import Any

ADDITION_TEMPLATE = "What is {a} + {b}? Answer with just the number."


def addition_splits(
    n_eval: int = 200,
    max_operand: int = 20,
    seed: int = 0,
    template: str = ADDITION_TEMPLATE,
    chat: bool = True,
    system: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All problems ``a + b`` with ``0 <= a, b <= max_operand``, shuffled with ``seed`` and split into
    ``(train, eval)`` with ``n_eval`` held-out problems. Rows have ``prompt`` (a chat message list when ``chat``,
    led by a ``system`` message when given — else the tokenizer's chat template adds its own default) and ``answer``
    (a string, for the ``last_number`` verifier)."""
    pairs = list(itertools.product(range(max_operand + 1), repeat=2))
    if n_eval >= len(pairs):
        raise ValueError(f"n_eval={n_eval} leaves no training problem out of {len(pairs)}")
    random.Random(seed).shuffle(pairs)

    def row(a: int, b: int) -> dict[str, Any]:
        text = template.format(a=a, b=b)
        messages = [{"role": "system", "content": system}] if system else []
        prompt: Any = [*messages, {"role": "user", "content": text}] if chat else text
        return {"prompt": prompt, "answer": str(a + b)}

    rows = [row(a, b) for a, b in pairs]
    return rows[n_eval:], rows[:n_eval]
