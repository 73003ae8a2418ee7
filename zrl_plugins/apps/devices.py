"""Which device a run uses, and whether a CPU computes in bf16 natively.

On a CPU with AVX512-BF16 or AMX, ``torch.autocast("cpu", bfloat16)`` runs the matrix products in hardware bf16,
faster than fp32 (``bench/results/cpu_bf16.md``); without those instructions bf16 is emulated and slower than fp32.
CPU FSDP for the tests and the engine matrix is here too (:func:`force_fsdp_on_cpu`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # oneDNN's own check, when torch exposes it
    except (AttributeError, RuntimeError):
        pass
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def describe(device: str, bf16: bool) -> str:
    """A one-line description of where and how a run computes, for the console and ``summary.json``."""
    import torch

    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        return f"GPU ({name}), {'bf16 autocast' if bf16 else 'fp32'}"
    threads = torch.get_num_threads()
    if bf16:
        return f"CPU ({threads} threads), bf16 autocast (native bf16: {'yes' if cpu_supports_bf16() else 'no'})"
    return f"CPU ({threads} threads), fp32"


def force_fsdp_on_cpu() -> None:
    """Make accelerate run FSDP on CPU processes (gloo) instead of silently falling back to DDP.

    Accelerate only turns ``ACCELERATE_USE_FSDP`` into an FSDP run on accelerator devices. FSDP2 itself works on CPU
    tensors, so CPU tests and the engine matrix's CPU mode flip the distributed type after accelerate has set up a
    multi-process CPU run. Call it first thing in a process launched with ``--multi_gpu`` and ``use_cpu``; the FSDP
    options come from the usual ``FSDP_*`` environment variables (see :data:`FSDP2_CPU_ENV`).
    """
    from accelerate import state
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    original = state.AcceleratorState.__init__
    if getattr(original, "_zrl_fsdp_on_cpu", False):
        return

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU:
            os.environ["ACCELERATE_USE_FSDP"] = "true"
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin or FullyShardedDataParallelPlugin()

    init._zrl_fsdp_on_cpu = True
    state.AcceleratorState.__init__ = init


# The environment accelerate's FSDP plugin reads: FSDP2, transformer-layer auto-wrap, sharded checkpoints.
FSDP2_CPU_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "2",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT",
    "FSDP_RESHARD_AFTER_FORWARD": "true",
}
