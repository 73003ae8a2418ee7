"""Process-group helpers shared by the recipes and multi-process scripts."""

from __future__ import annotations

import time

import torch.distributed as dist

# How long the main thread lets gloo's worker threads finish after the last collective (see below).
WORKER_DRAIN_SECONDS = 0.2


def shutdown_distributed() -> None:
    """Wait for every process, then destroy the default process group.

    Call it at the very end of a script launched with ``accelerate launch``/``torchrun``. A gloo or NCCL process
    group left alive until interpreter exit can abort the process ("terminate called without an active
    exception", SIGABRT) after training succeeded, which turns a good run into a failed exit code.

    The pause after the barrier avoids a deadlock at exit: a gloo worker thread releases each finished collective
    after ``wait()`` has returned, and that release needs the GIL when the work holds Python tensors. If the group's
    last reference (often a DDP reducer, freed when the trainer is) goes while that happens, the group's destructor
    joins the worker while holding the GIL, and both wait forever. Sleeping releases the GIL so the worker finishes.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        time.sleep(WORKER_DRAIN_SECONDS)
        dist.destroy_process_group()
