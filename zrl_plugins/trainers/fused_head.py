"""Score only the completion positions on CPU: the same log-probs, a third of the LM head's cost.

TRL's fused LM head projects hidden states onto the vocabulary in tiles. On Triton devices it projects only the
positions that have a label (the completion); elsewhere it projects *every* position, so that tile shapes stay fixed
for compiled backends. On a CPU in eager mode nothing recompiles, and the fp32 projection is most of a training step,
most of it on prompt positions (measured: ``bench/results/fused_head_cpu.md``). Positions without a label get
log-prob 0 either way, so results are the same.

TRL decides with its private ``_use_triton(device)`` as bound in ``trl.trainer.utils`` (recorded in
tests/trl_private_api.json); the kernels themselves look it up in their own module, so on CPU they keep their torch
path. The switch is scoped to zrl's own forward passes: TRL trainers in the same process are not affected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def completion_positions_only(device: torch.device) -> Iterator[None]:
    """Within this block, TRL's fused LM head on ``device`` (when it is a CPU) projects only labelled positions."""
    if torch.device(device).type != "cpu":
        yield
        return
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    trl_utils._use_triton = lambda d: d.type == "cpu" or original(d)
    try:
        yield
    finally:
        trl_utils._use_triton = original
