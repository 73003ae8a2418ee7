"""What rollout plugins need from a running trainer, as functions: a thin, stable façade over TRL's private methods,
so that a plugin never touches ``trainer._*`` and a TRL upgrade is absorbed here, once (exported by
:mod:`zrl_plugins.sdk`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn


def decoder_layers_owner(model: nn.Module) -> nn.Module:
    """The module holding ``layers`` (the decoder stack) of a causal LM, through PEFT and DDP wrappers."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    inner = getattr(model, "model", model)
    if not isinstance(getattr(inner, "layers", None), nn.ModuleList):
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")
    return inner


def _pass_through(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden_states


@contextlib.contextmanager
def skipped_layers(model: nn.Module, skip: Sequence[int]) -> Iterator[None]:
    """Run ``model`` with the decoder layers in ``skip`` acting as the identity, restoring them afterwards.

    Only the skipped layers' ``forward`` changes, never the module tree: sharded engines keep the hooks they put on
    every layer (DeepSpeed ZeRO-3, FSDP2), so a skipped layer is still visited and its parameters still managed.
    Decoder layers must return their hidden states as a tensor (transformers >= 5).
    """
    layers = decoder_layers_owner(model).layers
    skipped = [layers[i] for i in sorted(set(skip))]
    for layer in skipped:
        layer.forward = _pass_through  # an instance attribute: nn.Module.__call__ (and its hooks) still run
    try:
        yield
    finally:
        for layer in skipped:
            del layer.forward


def mode_of(trainer: Any) -> str:
    """``"train"`` or ``"eval"``: the mode the trainer's model is in (the metrics bucket TRL logs into)."""
    return "train" if trainer.model.training else "eval"


def tokenize_prompts(trainer: Any, prompts: Sequence[Any]) -> list[list[int]]:
    """The token ids of each prompt as TRL renders them for generation (chat template for conversational prompts),
    unpadded."""
    prompt_ids, _, _ = trainer._tokenize_prompts(list(prompts))
    return prompt_ids


def left_padded(trainer: Any, prompt_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as TRL batches them: ids left-padded with the tokenizer's pad token and their attention mask
    (``B x P`` each, on the trainer's device)."""
    return _padded(trainer, prompt_ids, "left")


def right_padded(trainer: Any, completion_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Completions as TRL batches them: ids right-padded and their mask (``B x T`` each, on the trainer's device)."""
    return _padded(trainer, completion_ids, "right")


def _padded(trainer: Any, rows: Sequence[Sequence[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    from trl.trainer.utils import pad

    device = trainer.accelerator.device
    pad_id = trainer._tokenizer.pad_token_id
    ids = pad([torch.tensor(r, dtype=torch.long) for r in rows], padding_value=pad_id, padding_side=side)
    mask = pad([torch.ones(len(r), dtype=torch.long) for r in rows], padding_value=0, padding_side=side)
    return ids.to(device), mask.to(device)


def token_logps(
    trainer: Any,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    skip_layers: Sequence[int] = (),
) -> list[list[float]]:
    """Log-probs of the given completion tokens under the trainer's policy (temperature-scaled, as the loss sees
    them), one list per row, computed without gradient; with ``skip_layers``, under the policy with those decoder
    layers skipped."""
    prompts, prompt_mask = left_padded(trainer, prompt_ids)
    completions, completion_mask = right_padded(trainer, completion_ids)
    model = trainer.accelerator.unwrap_model(trainer.model)
    context = skipped_layers(model, skip_layers) if skip_layers else contextlib.nullcontext()
    with torch.no_grad(), context:
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([prompts, completions], 1),
            torch.cat([prompt_mask, completion_mask], 1),
            completions.size(1),
            batch_size=trainer.args.per_device_train_batch_size,
        )
    return [row[: len(c)].tolist() for row, c in zip(logps, completion_ids, strict=True)]


def generate_with_trl(prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
    """Produce completions with TRL's own generation path (transformers ``generate`` or TRL's vLLM modes).

    For strategies that wrap plain sampling (e.g. dynamic sampling) and need it as a function returning TRL's
    ``rollout_func`` dict. Behaviour log-probs are those TRL returns (vLLM) or ``None``.
    """
    prompt_ids, images, multimodal_fields = trainer._tokenize_prompts(list(prompts))
    num_generations = trainer.num_generations if mode_of(trainer) == "train" else trainer.num_generations_eval
    completion_ids, logprobs = trainer._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations)
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}


def log_metric(trainer: Any, name: str, value: float) -> None:
    """Add one value to the metric ``name`` of the current mode; TRL averages the values of each logging interval."""
    trainer._metrics[mode_of(trainer)][name].append(float(value))
