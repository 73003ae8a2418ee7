"""Greedy (pass@1) accuracy of a model on rows with a verifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def _prompt_text(tokenizer: Any, prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def greedy_completions(
    model: Any, tokenizer: Any, prompts: Sequence[Any], max_new_tokens: int = 24, batch_size: int = 50
) -> list[str]:
    """Greedy completions of ``prompts`` (text or chat messages), decoded without special tokens."""
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    completions: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [_prompt_text(tokenizer, p) for p in prompts[start : start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            out = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            completions += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return completions


def greedy_accuracy(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    verifier: Callable[..., list[float | None]],
    max_new_tokens: int = 24,
    batch_size: int = 50,
) -> tuple[float, list[str]]:
    """Mean verifier score of greedy completions (``None`` counts as 0) and the completions themselves."""
    prompts = [r["prompt"] for r in rows]
    completions = greedy_completions(model, tokenizer, prompts, max_new_tokens, batch_size)
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    scores = verifier(prompts=prompts, completions=completions, **columns)
    return sum(s or 0.0 for s in scores) / len(rows), completions
