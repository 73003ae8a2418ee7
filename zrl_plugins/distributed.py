"""Process-group helpers shared by the recipes and multi-process scripts."""

from __future__ import annotations

import torch.distributed as dist


def shutdown_distributed() -> None:
    """Wait for every process, then destroy the default process group.

    Call it at the very end of a script launched with ``accelerate launch``/``torchrun``. A gloo or NCCL process
    group left alive until interpreter exit can abort the process ("terminate called without an active
    exception", SIGABRT) after training succeeded, which turns a good run into a failed exit code.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
