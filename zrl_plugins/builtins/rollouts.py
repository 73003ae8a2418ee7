"""The core's reference rollout strategy ``default``: TRL's own generation, unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def generate_with_trl(prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
    """Produce completions with TRL's own generation path (transformers ``generate`` or TRL's vLLM modes).

    For strategies that wrap plain sampling (e.g. dynamic sampling) and need it as a function returning TRL's
    ``rollout_func`` dict. Behaviour log-probs are those TRL returns (vLLM) or ``None``.
    """
    prompt_ids, images, multimodal_fields = trainer._tokenize_prompts(list(prompts))
    mode = "train" if trainer.model.training else "eval"
    num_generations = trainer.num_generations if mode == "train" else trainer.num_generations_eval
    completion_ids, logprobs = trainer._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}


class DefaultRollout:
    """Plain sampling by TRL (``default``, docs/methods.md#nested). With ``replaces_generation = False`` the trainer
    does not install a ``rollout_func`` at all, so TRL's generation, vLLM server/colocate modes and tool loop run
    exactly as in TRL."""

    replaces_generation = False
    off_policy = False

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        return generate_with_trl(prompts, trainer)
