"""``nested``: the behaviour model is the policy itself with some decoder layers skipped (docs/methods.md#nested, in the
spirit of Nested-ReFT). No second copy of the weights: while generating, each skipped decoder layer passes its hidden
states through unchanged. Every kept attention layer keeps its own ``layer_idx``, so the KV cache holds entries for
kept layers only and skipped layers are never attended to (tested: identical to a model built without those layers).

The module tree is never changed, only the skipped layers' ``forward``: sharded engines keep the hooks they put on
every layer (DeepSpeed ZeRO-3 re-registers its parameter hooks on the module tree after gathered generation, and
FSDP2 unshards each layer from its own pre-forward hook), so a skipped layer is still visited in order and its
parameters are still managed. Decoder layers must return their hidden states as a tensor (transformers >= 5).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn

from zrl_plugins.builtins.rollouts import generate_with_trl

Correction = Literal["none", "token_tis", "seq_tis"]


def decoder_layers_owner(model: nn.Module) -> nn.Module:
    """The module holding ``layers`` (the decoder stack) of a causal LM, through PEFT and DDP wrappers."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    inner = getattr(model, "model", model)
    if not isinstance(getattr(inner, "layers", None), nn.ModuleList):
        raise ValueError(f"nested rollout: cannot find the decoder layers of {type(model).__name__}")
    return inner


def _pass_through(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden_states


@contextlib.contextmanager
def skipped_layers(model: nn.Module, skip: Sequence[int]) -> Iterator[None]:
    """Run ``model`` with the decoder layers in ``skip`` acting as the identity, restoring them afterwards."""
    layers = decoder_layers_owner(model).layers
    skipped = [layers[i] for i in sorted(set(skip))]
    for layer in skipped:
        layer.forward = _pass_through  # an instance attribute: nn.Module.__call__ (and its hooks) still run
    try:
        yield
    finally:
        for layer in skipped:
            del layer.forward


def choose_layers(num_layers: int, skip_ratio: float, rng: random.Random) -> list[int]:
    """round(s·L) layers drawn from 1..L−2: never the first or the last layer."""
    candidates = list(range(1, num_layers - 1))
    count = min(round(skip_ratio * num_layers), len(candidates))
    return sorted(rng.sample(candidates, count))


def importance_weights(
    old_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor, correction: Correction, clip: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """w = π_old / π_behaviour per token (``token_tis``) or per sequence as the geometric mean of the token ratios
    (``seq_tis``), truncated at ``clip``; ``none`` gives 1 (the biased baseline). Stats describe the raw weights."""
    mask = mask.float()
    log_ratio = torch.nan_to_num(old_logps - behaviour_logps, nan=0.0) * mask
    if correction == "seq_tis":
        raw = torch.exp(log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0))
        valid = mask.sum(-1, keepdim=True) > 0
    else:
        raw = torch.exp(log_ratio)
        valid = mask > 0
    values = raw[valid]
    stats = {
        "is_weight_mean": values.mean().item() if values.numel() else 1.0,
        "is_weight_min": values.min().item() if values.numel() else 1.0,
        "is_weight_max": values.max().item() if values.numel() else 1.0,
        "is_truncated_fraction": (values > clip).float().mean().item() if values.numel() else 0.0,
    }
    if correction == "none":
        return torch.ones_like(raw), stats
    return torch.clamp(raw, max=clip), stats


class NestedRollout:
    """Layer-skipping behaviour model with off-policy correction.

    Args:
        skip_ratio: s, the fraction of decoder layers skipped per rollout batch (never the first or last layer).
        layers: a fixed list of layers to skip instead of a random draw.
        correction: ``none``, ``token_tis`` or ``seq_tis``.
        clip: C, the truncation of the importance weights.
        seed: seed of the per-batch layer draw (batch k uses ``seed + k``, so resumes draw the same layers).
    """

    replaces_generation = True
    off_policy = True

    def __init__(
        self,
        skip_ratio: float = 0.25,
        layers: Sequence[int] | None = None,
        correction: Correction = "token_tis",
        clip: float = 2.0,
        seed: int = 0,
    ):
        if not 0.0 <= skip_ratio < 1.0:
            raise ValueError(f"skip_ratio must be in [0, 1), got {skip_ratio}")
        if correction not in ("none", "token_tis", "seq_tis"):
            raise ValueError(f"correction must be 'none', 'token_tis' or 'seq_tis', got {correction!r}")
        if clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}")
        self.skip_ratio, self.layers, self.correction, self.clip, self.seed = skip_ratio, layers, correction, clip, seed
        self.batches = 0
        self.last_skipped: list[int] = []

    def validate(self, trainer: Any) -> None:
        if trainer.use_vllm:
            raise ValueError(
                "rollout 'nested' skips layers of the policy while generating, but with use_vllm=True vLLM generates "
                "from its own copy of the weights; use rollout 'default' with vLLM, or turn vLLM off."
            )
        num_layers = len(decoder_layers_owner(trainer.accelerator.unwrap_model(trainer.model)).layers)
        for layer in self.layers or []:
            if not 0 < layer < num_layers - 1:
                raise ValueError(f"nested rollout: layer {layer} cannot be skipped (the model has {num_layers} "
                                 "layers; the first and the last are never skipped)")  # fmt: skip

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        num_layers = len(decoder_layers_owner(model).layers)
        rng = random.Random(self.seed + self.batches)
        skip = sorted(self.layers) if self.layers is not None else choose_layers(num_layers, self.skip_ratio, rng)
        self.batches += 1
        self.last_skipped = skip
        with skipped_layers(model, skip):
            out = generate_with_trl(prompts, trainer)
            out["logprobs"] = self._behaviour_logps(trainer, out["prompt_ids"], out["completion_ids"])
        mode = "train" if trainer.model.training else "eval"
        trainer._metrics[mode]["rollout/skipped_layers"].append(float(len(skip)))
        return out

    @staticmethod
    def _behaviour_logps(
        trainer: Any, prompt_ids: list[list[int]], completion_ids: list[list[int]]
    ) -> list[list[float]]:
        from trl.trainer.utils import pad

        device = trainer.accelerator.device
        pad_id = trainer._tokenizer.pad_token_id
        prompts = pad([torch.tensor(p) for p in prompt_ids], padding_value=pad_id, padding_side="left").to(device)
        prompt_mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompt_ids], padding_value=0,
                          padding_side="left").to(device)  # fmt: skip
        completions = pad([torch.tensor(c) for c in completion_ids], padding_value=pad_id).to(device)
        completion_mask = pad([torch.ones(len(c), dtype=torch.long) for c in completion_ids], padding_value=0).to(
            device
        )
        with torch.no_grad():
            logps, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, torch.cat([prompts, completions], 1), torch.cat([prompt_mask, completion_mask], 1),
                completions.size(1), batch_size=trainer.args.per_device_train_batch_size,
            )  # fmt: skip
        return [row[: len(c)].tolist() for row, c in zip(logps, completion_ids, strict=True)]

    def importance_weights(
        self, old_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return importance_weights(old_logps, behaviour_logps, mask, self.correction, self.clip)

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])
