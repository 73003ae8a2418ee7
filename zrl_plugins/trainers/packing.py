"""Padding-free forward passes: the sequences of a micro-batch packed into rows without pad tokens.

TRL's batch is a padded rectangle — prompts left-padded, completions right-padded — and every pad position costs a
forward and a backward. :func:`pack` lays the real tokens of each sequence end to end into packed rows, with
``position_ids`` that restart at 0 for each sequence and no attention mask: transformers (≥ 5) then builds the
block-diagonal causal mask itself (``masking_utils.find_packed_sequence_indices`` for eager / sdpa / flex attention;
flash-attention kernels take the sequence boundaries from the same ``position_ids``). :meth:`PackedRows.unpack` maps
anything computed per packed position back to the padded ``B x L`` layout, so per-token log-probs, entropies and a
critic's values come back exactly where the padded pass puts them and everything downstream is unchanged.

Rows: sequences are placed first-fit-decreasing into rows of ``capacity`` tokens (default: the longest sequence, so
no row attends over more positions than the padded rectangle did). Flash-attention backends take one row holding
every sequence (``capacity=None`` with ``one_row=True``): their varlen kernels cost Σ nᵢ², whatever the row's length.
Where packing would save no position (sequences all about as long as each other), :func:`trim` gives the padded
batch cut to its own extent instead, with the same interface (``model_inputs()``, ``labels``, ``unpack``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # transformers' label for "not scored"


@dataclass(frozen=True)
class PackedRows:
    """One micro-batch packed into ``R`` rows of ``W`` positions (R ≤ B, W ≤ L).

    ``source`` maps every position of the padded ``B x L`` batch to the flat index ``r * W + k`` of its token in the
    packed rows (−1 for a pad position); ``lengths`` are the sequences' real token counts.
    """

    input_ids: torch.Tensor  # R x W
    position_ids: torch.Tensor  # R x W, restarting at 0 for each sequence (and for the tail of a row)
    labels: torch.Tensor  # R x W: the completion tokens, IGNORE elsewhere
    source: torch.Tensor  # B x L
    lengths: tuple[int, ...]

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "position_ids": self.position_ids}

    def varlen_kwargs(self) -> dict[str, torch.Tensor | int]:
        """Sequence boundaries of a single packed row for varlen kernels (flash attention; the ``seq_idx`` of
        linear-attention convolutions), as TRL's padding-free SFT collator passes them: computed once here rather
        than from ``position_ids`` with a device sync in every layer."""
        if self.position_ids.size(0) != 1:
            raise ValueError("varlen boundaries describe one packed row")
        starts = (self.position_ids[0] == 0).nonzero().flatten()
        end = torch.tensor([self.position_ids.size(1)], device=starts.device)
        cu_seq_lens = torch.cat([starts, end]).to(torch.int32)
        longest = int(cu_seq_lens.diff().max())
        sequence_index = torch.arange(cu_seq_lens.numel() - 1, dtype=torch.int32, device=starts.device)
        return {
            "cu_seq_lens_q": cu_seq_lens,
            "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": longest,
            "max_length_k": longest,
            "seq_idx": torch.repeat_interleave(sequence_index, cu_seq_lens.diff())[None],
        }

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``packed`` (R x W x ...) in the padded layout (B x L x ...), 0 at pad positions; differentiable."""
        flat = packed.reshape(-1, *packed.shape[2:])
        valid = self.source >= 0
        gathered = flat[self.source.clamp(min=0).reshape(-1)].reshape(*self.source.shape, *packed.shape[2:])
        valid = valid.reshape(*valid.shape, *([1] * (packed.dim() - 2)))
        return torch.where(valid, gathered, torch.zeros((), dtype=packed.dtype, device=packed.device))


@dataclass(frozen=True)
class TrimmedRows:
    """The padded batch cut to its own extent (columns holding no real token removed, at most the prompts' common
    left padding and the completions' common right padding): what a micro-batch whose sequences are all about as long
    as each other costs least as, since packing them would save no position."""

    input_ids: torch.Tensor  # B x W
    attention_mask: torch.Tensor  # B x W
    labels: torch.Tensor  # B x W: the completion tokens, IGNORE elsewhere
    columns: tuple[int, int]  # [first, last) column of the padded batch kept
    width: int  # L, the padded batch's width

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def unpack(self, trimmed: torch.Tensor) -> torch.Tensor:
        """``trimmed`` (B x W x ...) in the padded layout (B x L x ...), 0 in the columns cut away."""
        first, last = self.columns
        padding = [0, 0] * (trimmed.dim() - 2) + [first, self.width - last]
        return torch.nn.functional.pad(trimmed, padding)


def _extent(attention_mask: torch.Tensor) -> tuple[int, int]:
    """[first, last) columns in which some row has a real token."""
    used = attention_mask.bool().any(0).nonzero().flatten()
    return int(used[0]), int(used[-1]) + 1


def trim(input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int) -> TrimmedRows:
    """The padded batch without the columns in which no row has a real token; labels as TRL sets them."""
    width = input_ids.size(1)
    first, last = _extent(attention_mask)
    ids, mask = input_ids[:, first:last], attention_mask[:, first:last]
    labels = ids.masked_fill(mask == 0, IGNORE)
    prompt_columns = max(width - logits_to_keep - first, 0)
    labels[:, :prompt_columns] = IGNORE
    return TrimmedRows(ids, mask, labels, (first, last), width)


def sequence_spans(attention_mask: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each row's real tokens, which must be one contiguous span (left-padded prompt followed by
    a right-padded completion, as TRL builds them)."""
    mask = attention_mask.bool()
    lengths = mask.sum(1)
    starts = mask.int().argmax(1)
    width = mask.size(1)
    columns = torch.arange(width, device=mask.device).unsqueeze(0)
    span = (columns >= starts.unsqueeze(1)) & (columns < (starts + lengths).unsqueeze(1))
    if not torch.equal(span, mask):
        rows = (span != mask).any(1).nonzero().flatten().tolist()
        raise ValueError(
            f"padding_free: the attention mask of rows {rows[:5]} has holes; only a left-padded prompt followed by "
            "a right-padded completion can be packed. Set padding_free=False for such batches."
        )
    if (lengths == 0).any():
        raise ValueError("padding_free: a row of the batch has no tokens at all")
    return list(zip(starts.tolist(), lengths.tolist(), strict=True))


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins of at most ``capacity`` (a longer item gets a bin of its own),
    longest first, each into the first bin it fits."""
    bins: list[list[int]] = []
    fill: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, used in enumerate(fill):
            if used + lengths[index] <= capacity:
                bins[b].append(index)
                fill[b] += lengths[index]
                break
        else:
            bins.append([index])
            fill.append(lengths[index])
    return bins


RowPlan = tuple[list[tuple[int, int]], list[list[int]], int]  # (sequence spans, the rows' sequences, row width)


def row_plan(attention_mask: torch.Tensor, *, capacity: int | None = None, one_row: bool = False) -> RowPlan:
    """Which sequences go into which packed row, and the rows' width — what packing costs (rows x width positions),
    known before any tensor is built."""
    spans = sequence_spans(attention_mask)
    lengths = [n for _, n in spans]
    capacity = max(capacity or 0, max(lengths))
    bins = [list(range(len(lengths)))] if one_row else first_fit_decreasing(lengths, capacity)
    return spans, bins, max(sum(lengths[i] for i in row) for row in bins)


def trimmed_width(attention_mask: torch.Tensor) -> int:
    """How many columns :func:`trim` keeps."""
    first, last = _extent(attention_mask)
    return last - first


def pack(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    logits_to_keep: int,
    *,
    capacity: int | None = None,
    one_row: bool = False,
    pad_token_id: int = 0,
    plan: RowPlan | None = None,
) -> PackedRows:
    """Pack the padded batch (B x L, the last ``logits_to_keep`` columns the completions) into rows.

    ``capacity``: tokens per row (default: the longest sequence); ``one_row``: a single row with every sequence;
    ``plan``: the :func:`row_plan` already made for this batch.
    """
    batch, width = input_ids.shape
    spans, bins, row_width = plan or row_plan(attention_mask, capacity=capacity, one_row=one_row)
    lengths = [n for _, n in spans]
    device = input_ids.device
    packed_ids = torch.full((len(bins), row_width), pad_token_id, dtype=input_ids.dtype, device=device)
    position_ids = torch.zeros((len(bins), row_width), dtype=torch.long, device=device)
    source = torch.full((batch, width), -1, dtype=torch.long, device=device)
    for r, row in enumerate(bins):
        offset = 0
        for i in row:
            start, n = spans[i]
            packed_ids[r, offset : offset + n] = input_ids[i, start : start + n]
            position_ids[r, offset : offset + n] = torch.arange(n, device=device)
            source[i, start : start + n] = r * row_width + offset + torch.arange(n, device=device)
            offset += n
        # the tail restarts at 0: a "sequence" of its own that nothing real attends to
        position_ids[r, offset:] = torch.arange(row_width - offset, device=device)
    completion = torch.zeros((batch, width), dtype=torch.bool, device=device)
    completion[:, width - logits_to_keep :] = True
    labels = torch.full((len(bins) * row_width,), IGNORE, dtype=input_ids.dtype, device=device)
    scored = completion & (source >= 0)
    labels[source[scored]] = input_ids[scored]
    labels = labels.view(len(bins), row_width)
    labels[position_ids == 0] = IGNORE  # a sequence's first token is never predicted from the previous sequence
    return PackedRows(packed_ids, position_ids, labels, source, tuple(lengths))


def pad_fraction(attention_mask: torch.Tensor) -> float:
    """The share of the padded rectangle that is padding."""
    return 1.0 - float(attention_mask.sum()) / max(attention_mask.numel(), 1)
