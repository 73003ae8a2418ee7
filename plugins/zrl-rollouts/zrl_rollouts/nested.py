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

import random
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from zrl_plugins.sdk import (
    decoder_layers_owner,
    generate_with_trl,
    left_padded,
    log_metric,
    skipped_layers,
    token_logps,
    tokenize_prompts,
)

Selection = Literal["random", "block", "calibrated"]


def skip_count(num_layers: int, skip_ratio: float) -> int:
    """round(s·L) layers, at most L − 2 (the first and the last layer are never skipped)."""
    return min(round(skip_ratio * num_layers), max(num_layers - 2, 0))


def random_layers(num_layers: int, skip_ratio: float, rng: random.Random) -> list[int]:
    """``random``: round(s·L) layers drawn uniformly from 1..L−2."""
    return sorted(rng.sample(range(1, num_layers - 1), skip_count(num_layers, skip_ratio)))


def late_block(num_layers: int, skip_ratio: float) -> list[int]:
    """``block``: the round(s·L) contiguous layers just before the last two (late-middle layers are the cheapest
    to skip: measured on SmolLM2-135M, layers 26–27 of 30 cost 0.17 greedy accuracy on a + b, layers 20–21 0.40)."""
    count = skip_count(num_layers, skip_ratio)
    end = max(num_layers - 2, 1)
    return list(range(max(end - count, 1), end))


def blocks(num_layers: int, count: int) -> list[list[int]]:
    """Every contiguous block of ``count`` layers within 1..L−2."""
    return [list(range(start, start + count)) for start in range(1, num_layers - count)] if count else [[]]


def _token_kl(full_logits: torch.Tensor, skipped_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(full ‖ skipped) between the two next-token distributions."""
    full = torch.log_softmax(full_logits.float(), -1)
    skipped = torch.log_softmax(skipped_logits.float(), -1)
    kl = (full.exp() * (full - skipped)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1.0)


class NestedRollout:
    """Layer-skipping behaviour model. It reports its behaviour log-probs; the trainer's ``rollout_correction``
    (``token_tis`` unless one is named) corrects the loss for them.

    Args:
        skip_ratio: s, the fraction of decoder layers skipped (round(s·L) layers; never the first or the last).
        selection: which layers. ``calibrated`` (default) measures, on the batch's own prompts, how far skipping each
            candidate set moves the model — mean token KL(full ‖ skipped) over ``calibration_tokens`` greedy tokens
            of ``calibration_prompts`` prompts — and skips the cheapest set (candidates: every contiguous block, and
            the individually cheapest layers), re-calibrating every ``calibrate_every`` rollout batches (a resume
            restores the chosen set, or re-measures with ``recalibrate_on_resume``); ``block``: the contiguous
            late-middle block before the last two layers; ``random``: a fresh uniform draw per batch (the original
            rule).
        layers: a fixed list of layers to skip instead (overrides ``selection``).
        recalibrate_on_resume: measure again on the first batch after a resume instead of restoring the
            checkpointed set (the resumed run then may skip other layers than the uninterrupted one would).
        ess_warning: warn once when the effective sample size of the sequence importance weights (per N) falls
            below this (the trainer logs it every batch as ``rollout/ess``, with ``rollout/behaviour_kl``).
        seed: seed of the ``random`` draw (batch k uses ``seed + k``, so resumes draw the same layers).
    """

    replaces_generation = True
    off_policy = True

    def __init__(
        self,
        skip_ratio: float = 0.25,
        selection: Selection = "calibrated",
        layers: Sequence[int] | None = None,
        calibrate_every: int = 50,
        calibration_prompts: int = 8,
        calibration_tokens: int = 8,
        recalibrate_on_resume: bool = False,
        ess_warning: float = 0.3,
        seed: int = 0,
    ):
        if not 0.0 <= skip_ratio < 1.0:
            raise ValueError(f"skip_ratio must be in [0, 1), got {skip_ratio}")
        if selection not in ("random", "block", "calibrated"):
            raise ValueError(f"selection must be 'random', 'block' or 'calibrated', got {selection!r}")
        if calibrate_every < 1 or calibration_prompts < 1 or calibration_tokens < 1:
            raise ValueError("calibrate_every, calibration_prompts and calibration_tokens must be >= 1")
        self.skip_ratio, self.selection, self.layers = skip_ratio, selection, layers
        self.seed = seed
        self.calibrate_every, self.calibration_prompts = calibrate_every, calibration_prompts
        self.calibration_tokens, self.ess_warning = calibration_tokens, ess_warning
        self.recalibrate_on_resume = recalibrate_on_resume
        self.batches = 0
        self.last_skipped: list[int] = []
        self.calibrated: list[int] | None = None  # the calibrated skip set, and the batch it was measured at
        self.calibrated_at = -1
        self.calibration_kl: dict[str, float] = {}
        self._warned_ess = False

    def validate(self, trainer: Any) -> None:
        if trainer.use_vllm:
            raise ValueError(
                "rollout 'nested' skips layers of the policy while generating, but with use_vllm=True vLLM generates "
                "from its own copy of the weights; use rollout 'default' with vLLM, or turn vLLM off."
            )
        num_layers = len(decoder_layers_owner(trainer.accelerator.unwrap_model(trainer.model)).layers)
        for layer in self.layers or []:
            if not 0 < layer < num_layers - 1:
                raise ValueError(
                    f"nested rollout: layer {layer} cannot be skipped (the model has {num_layers} "
                    "layers; the first and the last are never skipped)"
                )

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        skip = self.choose(model, prompts, trainer)
        self.batches += 1
        self.last_skipped = skip
        with skipped_layers(model, skip):
            out = generate_with_trl(prompts, trainer)
        out["logprobs"] = token_logps(trainer, out["prompt_ids"], out["completion_ids"], skip_layers=skip)
        log_metric(trainer, "rollout/skipped_layers", len(skip))
        if self.calibrating and "chosen" in self.calibration_kl:
            # the chosen set's token KL(full ‖ skipped) when it was last measured
            log_metric(trainer, "rollout/calibration_kl", self.calibration_kl["chosen"])
        return out

    @property
    def calibrating(self) -> bool:
        """Whether the layers come from calibration (not a fixed ``layers`` list, not ``block`` or ``random``)."""
        return self.selection == "calibrated" and self.layers is None

    def choose(self, model: nn.Module, prompts: Sequence[Any], trainer: Any) -> list[int]:
        """The layers this batch skips, by ``layers`` / ``selection``."""
        num_layers = len(decoder_layers_owner(model).layers)
        if self.layers is not None:
            return sorted(self.layers)
        if self.selection == "random":
            return random_layers(num_layers, self.skip_ratio, random.Random(self.seed + self.batches))
        if self.selection == "block":
            return late_block(num_layers, self.skip_ratio)
        if self.calibrated is None or self.batches - self.calibrated_at >= self.calibrate_every:
            self.calibrated = self.calibrate(model, prompts, trainer)
            self.calibrated_at = self.batches
        return self.calibrated

    @torch.no_grad()
    def calibrate(self, model: nn.Module, prompts: Sequence[Any], trainer: Any) -> list[int]:
        """The cheapest skip set within the budget: every single layer's KL(full ‖ skipped) on a few greedy tokens of
        a few of this batch's prompts, then the actual KL of the candidate sets (each contiguous block; the k
        individually cheapest layers); averaged over processes, so every process skips the same layers."""
        num_layers = len(decoder_layers_owner(model).layers)
        count = skip_count(num_layers, self.skip_ratio)
        if count == 0:
            return []
        ids, mask, continuation = self._calibration_batch(model, prompts, trainer)

        def kl_of(skip: Sequence[int]) -> float:
            with skipped_layers(model, skip):
                skipped = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            return _token_kl(full, skipped, continuation).item()

        full = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        single = torch.tensor([kl_of([layer]) for layer in range(1, num_layers - 1)], device=trainer.accelerator.device)
        single = trainer.accelerator.reduce(single, reduction="mean").cpu()
        cheapest = sorted((torch.argsort(single)[:count] + 1).tolist())
        candidates = [cheapest, *blocks(num_layers, count)]
        costs = torch.tensor([kl_of(c) for c in candidates], device=trainer.accelerator.device)
        costs = trainer.accelerator.reduce(costs, reduction="mean").cpu()
        best = int(torch.argmin(costs))
        self.calibration_kl = {
            "chosen": float(costs[best]),
            "cheapest_layers": float(costs[0]),
            "best_block": float(costs[1:].min()),
        }
        return candidates[best]

    def _calibration_batch(self, model: nn.Module, prompts: Sequence[Any], trainer: Any):
        """A few of the batch's distinct prompts with the full model's greedy continuation, and the mask of the
        continuation positions' next-token predictions (the positions KL is measured at)."""
        unique = list(dict.fromkeys(map(str, prompts)))[: self.calibration_prompts]
        chosen = [next(p for p in prompts if str(p) == u) for u in unique]
        ids, mask = left_padded(trainer, tokenize_prompts(trainer, chosen))
        for _ in range(self.calibration_tokens):  # greedy continuation, full model (no cache: a few tokens only)
            nxt = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
        continuation = torch.zeros_like(mask, dtype=torch.float)
        continuation[:, -self.calibration_tokens - 1 : -1] = 1.0  # positions predicting the continuation tokens
        return ids, mask, continuation

    def observe_mismatch(self, stats: dict[str, float]) -> None:
        """Warn once when the behaviour model is so far from the policy that few completions carry the update."""
        ess = stats["rollout/ess"]
        if ess >= self.ess_warning or self._warned_ess:
            return
        self._warned_ess = True
        warnings.warn(
            f"nested rollout: the importance weights' effective sample size is {ess:.2f} of the batch (skipping "
            f"layers {self.last_skipped}; behaviour KL {stats['rollout/behaviour_kl']:.3f}): the behaviour model is "
            "far from the policy, so few completions carry the update. Lower skip_ratio"
            + ("." if self.calibrating else " or use selection='calibrated'."),
            stacklevel=2,
        )

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "calibrated": self.calibrated, "calibrated_at": self.calibrated_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])
        self.calibrated_at = int(state["calibrated_at"])
        # the checkpointed set, so that a resumed run skips exactly what the uninterrupted one would
        self.calibrated = None if self.recalibrate_on_resume else state["calibrated"]
