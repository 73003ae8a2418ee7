"""The server side of zrl's shared-memory weight transfer: a vLLM ``WeightTransferEngine`` named ``zrl_shm``.

vLLM builds weight-transfer engines by name from ``WeightTransferEngineFactory`` (``--weight-transfer-config
'{"backend": "zrl_shm"}'``); its own engines are NCCL and CUDA IPC, so a server on vLLM's CPU build cannot receive
weights. zrl's package declares :func:`register` under vLLM's ``vllm.general_plugins`` entry-point group, which every
vLLM process (API server and workers) loads at start, so installing zrl is enough.

The transfer: the trainer writes its tensors to one safetensors file in a directory on shared memory (``/dev/shm``)
that it named at ``/init_weight_transfer_engine``; ``/update_weights`` names the file; the worker reads it (safetensors:
no code runs on load) and loads it the way vLLM's own ``reload_weights`` does (layerwise reload, so that kernels that
repack their weights after loading repack the new ones), then repacks the layers that keep their weight beside a
packed copy (a tied LM head on CPU: see ``zrl_plugins.trainers.vllm_cpu``). Only files inside the initial directory
are read.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKEND = "zrl_shm"


def register() -> None:
    """``vllm.general_plugins`` entry point: add the ``zrl_shm`` engine to vLLM's registry (once per process)."""
    try:
        from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
    except ImportError:  # a vLLM without weight-transfer engines (< 0.17): nothing to register into
        return
    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, __name__, "SharedMemoryWeightTransferEngine")


def resolve_inside(directory: Path, file: str) -> Path:
    """``directory / file``, refused unless it is a ``.safetensors`` file directly inside ``directory``."""
    path = (directory / file).resolve()
    if path.parent != directory.resolve() or path.suffix != ".safetensors":
        raise ValueError(f"zrl_shm reads only .safetensors files inside {directory}, not {file!r}")
    return path


@functools.cache
def _engine_classes() -> tuple[type, type, type]:
    # vLLM is imported here, not at module level: the plugin module is imported by every vLLM process, and the
    # trainer imports this module's helpers without vLLM installed
    import torch
    from vllm.distributed.weight_transfer.base import (
        WeightTransferEngine,
        WeightTransferInitInfo,
        WeightTransferUpdateInfo,
    )

    @dataclass
    class SharedMemoryInitInfo(WeightTransferInitInfo):
        directory: str

    @dataclass
    class SharedMemoryUpdateInfo(WeightTransferUpdateInfo):
        file: str
        num_tensors: int | None = None

    class SharedMemoryWeightTransferEngine(WeightTransferEngine[SharedMemoryInitInfo, SharedMemoryUpdateInfo]):
        init_info_cls = SharedMemoryInitInfo
        update_info_cls = SharedMemoryUpdateInfo
        supports_draft_weight_update = False

        directory: Path | None = None

        def init_transfer_engine(self, init_info: SharedMemoryInitInfo) -> None:
            directory = Path(init_info.directory)
            if not directory.is_dir():
                raise ValueError(f"zrl_shm: {directory} is not a directory this server can read")
            self.directory = directory.resolve()

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)

        def update_weights(self, update_info: dict[str, Any]) -> None:
            # the base class synchronizes the accelerator, which fails where there is none (vLLM's CPU build)
            self.receive_weights(self.parse_update_info(update_info))
            if self.device.type != "cpu":
                torch.accelerator.synchronize()

        def receive_weights(self, update_info: SharedMemoryUpdateInfo) -> None:
            from safetensors import safe_open
            from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

            if self.directory is None:
                raise RuntimeError("zrl_shm: /init_weight_transfer_engine must name the directory first")
            path = resolve_inside(self.directory, update_info.file)
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                names = list(handle.keys())
                if update_info.num_tensors is not None and len(names) != update_info.num_tensors:
                    raise ValueError(f"zrl_shm: {path} holds {len(names)} tensors, {update_info.num_tensors} sent")
                with disable_mtp_completeness_check():
                    self.model.load_weights((name, handle.get_tensor(name)) for name in names)

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            from ..trainers.vllm_cpu import repack_kept_weights

            finalize_layerwise_reload(self.model, self.model_config)
            repack_kept_weights(self.model)

        def shutdown(self) -> None:
            return None

    return SharedMemoryInitInfo, SharedMemoryUpdateInfo, SharedMemoryWeightTransferEngine


def __getattr__(name: str) -> Any:
    # vLLM's factory loads the engine class by name from this module (lazily, like its own engines)
    classes = {"SharedMemoryInitInfo": 0, "SharedMemoryUpdateInfo": 1, "SharedMemoryWeightTransferEngine": 2}
    if name in classes:
        return _engine_classes()[classes[name]]
    raise AttributeError(name)
