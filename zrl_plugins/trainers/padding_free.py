"""The padding-free forward pass (``padding_free=True``): per-token log-probs and entropies of the completions from
packed rows (:mod:`.packing`), returned in TRL's B x T layout.

What cannot pack is refused before anything runs (:func:`check_model`), and the first packed pass of each model is
checked against an unpacked one (:meth:`PaddingFree.verify`): a model whose layers let one packed sequence see
another (an attention that ignores ``position_ids``, a convolution or recurrent state running across the row) is
refused with the measured difference, never trained with a silently wrong mask.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..framework.errors import ConfigError
from .packing import PackedRows, TrimmedRows, pack, row_plan, trim, trimmed_width

Rows = PackedRows | TrimmedRows

# Attention backends whose masks transformers builds from packed position_ids (masking_utils) or that read the
# sequence boundaries from them (flash-attention varlen)
MASKED_BACKENDS = ("eager", "sdpa", "flex_attention")

# The mean |Δ log p| over a sequence's completion tokens, alone vs packed after another sequence, allowed per weight
# dtype (the check runs without autocast: it tests the mask, not the arithmetic). Measured on SmolLM2-135M (16 and 128
# completion tokens): rounding gives 5e-7 with fp32 weights and 0.009-0.012 with bf16 weights; a leaking mask gives
# 0.89 and 0.66-0.89
ISOLATION_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6}
LOW_PRECISION_TOLERANCE = 0.2


def attention_backend(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def check_model(model: Any, *, aux_loss: bool, multimodal: bool) -> bool:
    """Refuse what cannot run padding-free (a :class:`ConfigError` naming what works); return whether the backend
    wants one packed row (flash-attention varlen) rather than rows as long as the longest sequence."""
    if multimodal:
        raise ConfigError(
            "padding_free=True packs text only: this model takes images (pixel_values), whose features are "
            "placed by the padded layout. Set padding_free=False."
        )
    if aux_loss:
        raise ConfigError(
            "padding_free=True with a router aux loss: the MoE load-balancing loss counts the packed rows' tail "
            "positions (it has no attention mask to skip them), so it would differ from the padded pass. Set "
            "padding_free=False or router_aux_loss_coef=0."
        )
    backend = attention_backend(model)
    if "flash" in backend:
        return True
    if backend not in MASKED_BACKENDS:
        raise ConfigError(
            f"padding_free=True: the attention backend {backend!r} is not known to isolate packed sequences; use "
            f"one of {', '.join(MASKED_BACKENDS)} or a flash-attention backend (attn_implementation), or set "
            "padding_free=False."
        )
    return False


def settings_for(trainer: Any) -> PaddingFree | None:
    """The trainer's packing settings (``None`` without ``padding_free``), refusing what cannot pack."""
    if not trainer.args.padding_free:
        return None
    one_row = check_model(trainer.model, aux_loss=trainer.aux_loss_enabled, multimodal=trainer._is_vlm)
    pad_token_id = getattr(trainer.processing_class, "pad_token_id", None)
    return PaddingFree(one_row=one_row, pad_token_id=0 if pad_token_id is None else int(pad_token_id))


def check_text_only(multimodal: dict[str, Any]) -> None:
    """A batch with image inputs reaching a padding-free pass (the model was not known to take images)."""
    present = sorted(key for key, value in multimodal.items() if value is not None)
    if present:
        raise ConfigError(
            f"padding_free=True packs text only; this batch has {', '.join(present)}. Set padding_free=False."
        )


@dataclass
class PaddingFree:
    """How this trainer packs, and which models have passed the isolation check."""

    one_row: bool = False
    pad_token_id: int = 0
    verified: set[int] = field(default_factory=set)

    def pack(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int) -> PackedRows:
        return pack(input_ids, attention_mask, logits_to_keep, one_row=self.one_row, pad_token_id=self.pad_token_id)

    def layout(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int) -> Rows:
        """The packed rows, or the padded batch trimmed to its extent where packing saves no position (sequences
        about as long as each other: the padded pass then skips building a packed mask). Flash backends always
        pack: their varlen kernels skip pad positions either way, and need the boundaries."""
        plan = row_plan(attention_mask, one_row=self.one_row)  # decided on sizes, then only the winner is built
        _, bins, row_width = plan
        if self.one_row or len(bins) * row_width < input_ids.size(0) * trimmed_width(attention_mask):
            return pack(input_ids, attention_mask, logits_to_keep, pad_token_id=self.pad_token_id, plan=plan)
        return trim(input_ids, attention_mask, logits_to_keep)

    def verify(
        self,
        model: Any,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int,
    ) -> None:
        """On a model's first packed pass: the last sequence's log-probs packed after the first one must equal its
        log-probs alone. Every process runs it at the same call (ZeRO-3 / FSDP gather parameters collectively)."""
        if id(model) in self.verified or input_ids.size(0) < 2:
            return
        rows = [0, input_ids.size(0) - 1]
        ids, mask = input_ids[rows], attention_mask[rows]
        together = pack(ids, mask, logits_to_keep, one_row=True, pad_token_id=self.pad_token_id)
        alone = pack(ids[1:], mask[1:], logits_to_keep, pad_token_id=self.pad_token_id)
        with torch.no_grad(), torch.autocast(input_ids.device.type, enabled=False):
            packed_logps = packed_forward(model, together, logits_to_keep, varlen=self.one_row)[0][1]
            alone_logps = packed_forward(model, alone, logits_to_keep)[0][0]
        completion = mask[1, -logits_to_keep:].bool()
        if not completion.any():
            return
        difference = (packed_logps[completion] - alone_logps[completion]).abs()
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        tolerance = ISOLATION_TOLERANCE.get(dtype, LOW_PRECISION_TOLERANCE)
        if not difference.mean().item() <= tolerance:
            raise ConfigError(
                f"padding_free=True: {type(model).__name__} ({attention_backend(model)} attention) does not keep "
                f"packed sequences apart: a sequence's log-probs change by {difference.mean().item():.3g} on average "
                f"(at most {difference.max().item():.3g}) when another sequence is packed before it (tolerance "
                f"{tolerance:g} in {dtype}). Its layers ignore position_ids or carry state across the row. Set "
                "padding_free=False."
            )
        self.verified.add(id(model))


def packed_forward(
    model: Any,
    rows: Rows,
    logits_to_keep: int,
    compute_entropy: bool = False,
    varlen: bool = False,
    **forward_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One packed forward: (log-probs, entropies or ``None``), per-token in B x T.
    ``varlen``: pass a single row's sequence boundaries to the attention kernels (flash-attention backends)."""
    if varlen and isinstance(rows, PackedRows) and rows.input_ids.size(0) == 1:
        forward_kwargs = {**rows.varlen_kwargs(), **forward_kwargs}
    outputs = model(**rows.model_inputs(), labels=rows.labels, fused_lm_head=True, **forward_kwargs)

    def completion_layout(per_position: torch.Tensor) -> torch.Tensor:
        # the fused head scores position k + 1 from hidden state k: shift back to token positions, then unpack
        aligned = torch.nn.functional.pad(per_position, (1, 0))
        return rows.unpack(aligned)[:, -logits_to_keep:]

    logps = completion_layout(outputs.log_probs)
    entropies = completion_layout(outputs.entropy) if compute_entropy else None
    return logps, entropies


def logps_and_entropies(
    settings: PaddingFree,
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    *,
    batch_size: int | None,
    compute_entropy: bool,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    on_pack: Callable[[Rows], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """TRL's ``_get_per_token_logps_and_entropies`` over packed (or trimmed) rows, ``batch_size`` sequences per
    pass; ``on_pack`` receives each pass's rows (what per-position outputs of the same passes are unpacked with)."""
    settings.verify(model, input_ids, attention_mask, logits_to_keep)
    batch_size = batch_size or input_ids.size(0)
    all_logps, all_entropies = [], []
    for start in range(0, input_ids.size(0), batch_size):
        end = start + batch_size
        rows = settings.layout(input_ids[start:end], attention_mask[start:end], logits_to_keep)
        if on_pack is not None:
            on_pack(rows)
        with autocast():
            logps, entropies = packed_forward(model, rows, logits_to_keep, compute_entropy, settings.one_row)
        all_logps.append(logps)
        if entropies is not None:
            all_entropies.append(entropies)
    return torch.cat(all_logps), torch.cat(all_entropies) if compute_entropy else None


def unpack_each(packs: list[Rows], per_position: list[torch.Tensor]) -> torch.Tensor:
    """Values computed per packed position in each pass, back in the padded B x L layout."""
    if len(packs) != len(per_position):
        raise RuntimeError(f"{len(per_position)} packed outputs for {len(packs)} packs")
    return torch.cat([rows.unpack(x) for rows, x in zip(packs, per_position, strict=True)])
