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
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn

from zrl_plugins.sdk import generate_with_trl

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


Selection = Literal["random", "block", "calibrated"]


def skip_count(num_layers: int, skip_ratio: float) -> int:
    """round(s·L) layers, at most L − 2 (the first and the last layer are never skipped)."""
    return min(round(skip_ratio * num_layers), max(num_layers - 2, 0))


def choose_layers(num_layers: int, skip_ratio: float, rng: random.Random) -> list[int]:
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
        **sampling_quality(old_logps, behaviour_logps, mask),
    }
    if correction == "none":
        return torch.ones_like(raw), stats
    return torch.clamp(raw, max=clip), stats


def sampling_quality(old_logps: torch.Tensor, behaviour_logps: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the behaviour model is from π_old on what it sampled: ``behaviour_kl`` = the mean over sampled tokens
    of log π_behaviour − log π_old (an estimate of KL(behaviour ‖ π_old)), and ``ess`` = the effective sample size
    (Σ w)² / (N Σ w²) of the sequence importance weights w = Π_t π_old / π_behaviour, over N sequences (1 = on
    policy, 1/N = one sequence carries all the weight), computed in log space."""
    mask = mask.float()
    log_ratio = torch.nan_to_num(old_logps - behaviour_logps, nan=0.0) * mask
    tokens = mask.sum()
    behaviour_kl = (-log_ratio.sum() / tokens.clamp(min=1.0)).item()
    rows = mask.sum(-1) > 0
    log_w = log_ratio.sum(-1)[rows]
    if log_w.numel() == 0:
        return {"behaviour_kl": 0.0, "ess": 1.0}
    ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / log_w.numel()
    return {"behaviour_kl": behaviour_kl, "ess": ess.item()}


def _token_kl(full_logits: torch.Tensor, skipped_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(full ‖ skipped) between the two next-token distributions."""
    full = torch.log_softmax(full_logits.float(), -1)
    skipped = torch.log_softmax(skipped_logits.float(), -1)
    kl = (full.exp() * (full - skipped)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1.0)


class NestedRollout:
    """Layer-skipping behaviour model with off-policy correction.

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
        correction: ``none``, ``token_tis`` or ``seq_tis``.
        clip: C, the truncation of the importance weights.
        recalibrate_on_resume: measure again on the first batch after a resume instead of restoring the
            checkpointed set (the resumed run then may skip other layers than the uninterrupted one would).
        ess_warning: warn once when the effective sample size of the sequence importance weights (per N) falls
            below this (logged every batch as ``rollout/ess``, with ``rollout/behaviour_kl``).
        seed: seed of the ``random`` draw (batch k uses ``seed + k``, so resumes draw the same layers).
    """

    replaces_generation = True
    off_policy = True

    def __init__(
        self,
        skip_ratio: float = 0.25,
        selection: Selection = "calibrated",
        layers: Sequence[int] | None = None,
        correction: Correction = "token_tis",
        clip: float = 2.0,
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
        if correction not in ("none", "token_tis", "seq_tis"):
            raise ValueError(f"correction must be 'none', 'token_tis' or 'seq_tis', got {correction!r}")
        if clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}")
        if calibrate_every < 1 or calibration_prompts < 1 or calibration_tokens < 1:
            raise ValueError("calibrate_every, calibration_prompts and calibration_tokens must be >= 1")
        self.skip_ratio, self.selection, self.layers = skip_ratio, selection, layers
        self.correction, self.clip, self.seed = correction, clip, seed
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
                raise ValueError(f"nested rollout: layer {layer} cannot be skipped (the model has {num_layers} "
                                 "layers; the first and the last are never skipped)")  # fmt: skip

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        skip = self.choose(model, prompts, trainer)
        self.batches += 1
        self.last_skipped = skip
        with skipped_layers(model, skip):
            out = generate_with_trl(prompts, trainer)
            out["logprobs"] = self._behaviour_logps(trainer, out["prompt_ids"], out["completion_ids"])
        mode = "train" if trainer.model.training else "eval"
        trainer._metrics[mode]["rollout/skipped_layers"].append(float(len(skip)))
        if self.calibrating and "chosen" in self.calibration_kl:
            # the chosen set's token KL(full ‖ skipped) when it was last measured
            trainer._metrics[mode]["rollout/calibration_kl"].append(self.calibration_kl["chosen"])
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
            return choose_layers(num_layers, self.skip_ratio, random.Random(self.seed + self.batches))
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
        self.calibration_kl = {"chosen": float(costs[best]), "cheapest_layers": float(costs[0]),
                               "best_block": float(costs[1:].min())}  # fmt: skip
        return candidates[best]

    def _calibration_batch(self, model: nn.Module, prompts: Sequence[Any], trainer: Any):
        """A few of the batch's distinct prompts with the full model's greedy continuation, and the mask of the
        continuation positions' next-token predictions (the positions KL is measured at)."""
        from trl.trainer.utils import pad

        unique = list(dict.fromkeys(map(str, prompts)))[: self.calibration_prompts]
        chosen = [next(p for p in prompts if str(p) == u) for u in unique]
        prompt_ids, _, _ = trainer._tokenize_prompts(chosen)
        device = trainer.accelerator.device
        pad_id = trainer._tokenizer.pad_token_id
        ids = pad([torch.tensor(p) for p in prompt_ids], padding_value=pad_id, padding_side="left").to(device)
        mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompt_ids], padding_value=0,
                   padding_side="left").to(device)  # fmt: skip
        for _ in range(self.calibration_tokens):  # greedy continuation, full model (no cache: a few tokens only)
            nxt = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
        continuation = torch.zeros_like(mask, dtype=torch.float)
        continuation[:, -self.calibration_tokens - 1 : -1] = 1.0  # positions predicting the continuation tokens
        return ids, mask, continuation

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
        weights, stats = importance_weights(old_logps, behaviour_logps, mask, self.correction, self.clip)
        if stats["ess"] < self.ess_warning and not self._warned_ess:
            self._warned_ess = True
            warnings.warn(
                f"nested rollout: the importance weights' effective sample size is {stats['ess']:.2f} of the batch "
                f"(skipping layers {self.last_skipped}; behaviour KL {stats['behaviour_kl']:.3f}): the behaviour model "
                "is far from the policy, so few completions carry the update. Lower skip_ratio"
                + ("." if self.calibrating else " or use selection='calibrated'."),
                stacklevel=2,
            )
        return weights, stats

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "calibrated": self.calibrated, "calibrated_at": self.calibrated_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])
        self.calibrated_at = int(state["calibrated_at"])
        # the checkpointed set, so that a resumed run skips exactly what the uninterrupted one would
        self.calibrated = None if self.recalibrate_on_resume else state["calibrated"]
