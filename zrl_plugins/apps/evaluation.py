"""Greedy (pass@1) accuracy of a model on rows with a verifier."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .eval_metrics import avg_at_k, bootstrap_interval, pass_at_k_curve

logger = logging.getLogger(__name__)


def _prompt_text(tokenizer: Any, prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None) is None:  # a base model without one (the `tiny` test model)
        _warn_no_chat_template(type(tokenizer).__name__)
        return "\n".join(str(message.get("content", "")) for message in prompt) + "\n"
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


@functools.cache
def _warn_no_chat_template(tokenizer: str) -> None:
    logger.warning(
        "the tokenizer (%s) has no chat template: chat prompts are given as their messages' text, one per line",
        tokenizer,
    )


@torch.no_grad()
def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    max_new_tokens: int = 24,
    batch_size: int = 50,
    stats: list[tuple[int, bool]] | None = None,
    **sampling: Any,
) -> list[str]:
    """Completions of ``prompts`` (text or chat messages), decoded without special tokens; ``sampling`` goes to
    ``generate`` (greedy when empty). ``stats``, when given, receives (tokens, truncated) per completion."""
    was_training = model.training
    model.eval()
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    options = sampling or {"do_sample": False}
    # stop where TRL's rollouts and vLLM stop: at the tokenizer's EOS as well as the generation config's
    stops = stop_token_ids(model, tokenizer)
    window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    completions: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [_prompt_text(tokenizer, p) for p in prompts[start : start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            budget = max_new_tokens
            if window is not None:  # never past the positions the model has: the cut counts as truncated
                budget = max(1, min(budget, window - batch["input_ids"].shape[1]))
            out = model.generate(
                **batch, max_new_tokens=budget, pad_token_id=tokenizer.pad_token_id, eos_token_id=sorted(stops),
                **options,
            )  # fmt: skip
            generated = out[:, batch["input_ids"].shape[1] :]
            completions += tokenizer.batch_decode(generated, skip_special_tokens=True)
            if stats is not None:
                stats += [_length_and_truncation(row.tolist(), stops) for row in generated]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return completions


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens ``generate`` stops at: the tokenizer's EOS and the generation config's (which may be several,
    e.g. ``<|im_end|>`` and ``<|endoftext|>``)."""
    stops = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        stops |= set(configured) if isinstance(configured, list | tuple) else {configured}
    return stops


def _length_and_truncation(ids: list[int], stops: set[int]) -> tuple[int, bool]:
    """Generated tokens up to and including the first stop token, and whether there was none (cut by the
    budget)."""
    for position, token in enumerate(ids):
        if token in stops:
            return position + 1, False
    return len(ids), True


def greedy_completions(
    model: Any, tokenizer: Any, prompts: Sequence[Any], max_new_tokens: int = 24, batch_size: int = 50
) -> list[str]:
    """Greedy completions of ``prompts`` (text or chat messages), decoded without special tokens."""
    return generate_completions(model, tokenizer, prompts, max_new_tokens, batch_size)


def prompts_and_columns(rows: Sequence[dict[str, Any]]) -> tuple[list[Any], dict[str, list[Any]]]:
    """Rows as a verifier takes them: the prompts, and every other column as a list (``answer``, ...)."""
    return [r["prompt"] for r in rows], {key: [r[key] for r in rows] for key in rows[0] if key != "prompt"}


def greedy_accuracy(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    verifier: Callable[..., list[float | None]],
    max_new_tokens: int = 24,
    batch_size: int = 50,
) -> tuple[float, list[str]]:
    """Fraction of greedy completions that are correct (:func:`is_correct`) and the completions themselves."""
    prompts, columns = prompts_and_columns(rows)
    completions = greedy_completions(model, tokenizer, prompts, max_new_tokens, batch_size)
    scores = verifier(prompts=prompts, completions=completions, **columns)
    return sum(map(is_correct, scores)) / len(rows), completions


def is_correct(score: float | None) -> bool:
    """A completion is correct when its verifier score is at least 1, the score every built-in verifier gives a
    correct answer: format-aware penalties (negative), partial credit and unscorable (``None``) count as wrong, so
    accuracy means the same whatever reward shaping a run trains with."""
    return score is not None and score >= 1.0


def summarize_scores(
    greedy_scores: Sequence[float | None],
    greedy_lengths: Sequence[int],
    greedy_truncated: Sequence[bool],
    sampled_scores: Sequence[Sequence[float | None]] | None = None,
) -> dict[str, Any]:
    """Evaluation metrics from scored completions (``None`` = unscorable counts as wrong; docs/methods.md,
    "Evaluation metrics").

    pass@1 is greedy accuracy, with its 95 % bootstrap interval over problems. With ``n`` samples per problem:
    pass@k for k = 1, 2, 4, … up to n by the unbiased estimator of Chen et al. (2021), each with its interval, and
    avg@n. Lengths are in tokens, for the greedy completions that were correct and incorrect.
    """
    correct = [is_correct(s) for s in greedy_scores]
    n = max(len(correct), 1)

    def mean(values: list[int]) -> float | None:
        return sum(values) / len(values) if values else None

    result: dict[str, Any] = {
        "n": len(correct),
        "pass@1": sum(correct) / n,
        "mean_length_correct": mean([length for length, c in zip(greedy_lengths, correct, strict=True) if c]),
        "mean_length_incorrect": mean([length for length, c in zip(greedy_lengths, correct, strict=True) if not c]),
        "truncation_rate": sum(bool(t) for t in greedy_truncated) / n,
    }
    if correct:
        result["pass@1_95ci"] = list(bootstrap_interval([float(c) for c in correct]))
    if sampled_scores:
        samples = [[is_correct(s) for s in row] for row in sampled_scores]
        k = len(samples[0])
        result[f"avg@{k}"] = avg_at_k(samples)
        for size, point in pass_at_k_curve(samples).items():
            name = f"pass@{size}" if size > 1 else "pass@1_sampled"
            result[name] = point["estimate"]
            result[f"{name}_95ci"] = [point["low"], point["high"]]
    return result
