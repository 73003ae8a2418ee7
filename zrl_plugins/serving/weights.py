"""The trainer's side of the weight transfer to a ``vllm serve`` process.

* :class:`SharedMemorySender` (``zrl_shm``, any machine, the only one on vLLM's CPU build): the stream thread writes
  a snapshot of the published weights to one safetensors file in a private directory on ``/dev/shm`` and asks the
  server (``zrl_plugins.serving.vllm_engine`` on its side) to load it, between two generation batches. The trainer
  only copies its parameters (one memcpy) and goes on training.
* :class:`NCCLSender` (``nccl``, GPUs): vLLM's NCCL engine through TRL's async trainer's ``WeightTransferClient``
  (the one module that knows TRL's 1.16 and 1.18 import paths); it streams from the trainer's parameters while the
  server is paused, on the trainer's thread.

Both pause the server (requests in flight finish first), load, tag the server with the version and resume.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .client import ServerClient, ServerError


def _shared_memory_root() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class SharedMemorySender:
    """Send snapshots through a safetensors file the server reads (safetensors: loading runs no code)."""

    deferred = True

    def __init__(self, client: ServerClient, directory: str | None = None):
        self.client = client
        self.directory = Path(directory or tempfile.mkdtemp(prefix="zrl-weights-", dir=_shared_memory_root()))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.bytes_sent = 0
        self.client.init_weight_transfer_engine({"directory": str(self.directory)})

    def send(self, walk: Callable[[], Iterable[tuple[str, torch.Tensor]]], version: int) -> None:
        from safetensors.torch import save_file

        # safetensors refuses tensors that share memory; the snapshot's are copies, made contiguous here
        named = {name: tensor.contiguous() for name, tensor in walk()}
        path = self.directory / f"v{version}.safetensors"
        partial = path.with_suffix(".partial")
        save_file(named, str(partial))
        partial.replace(path)
        self.bytes_sent += path.stat().st_size
        try:
            self.client.pause()
            try:
                self.client.start_weight_update()
                self.client.update_weights({"file": path.name, "num_tensors": len(named)})
                self.client.finish_weight_update(version)
                self.client.reset_prefix_cache()  # cached prefixes hold the old weights' keys and values
            finally:
                self.client.resume()
        finally:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _trl_weight_transfer() -> Any:
    """TRL's NCCL ``WeightTransferClient`` and ``VLLMClient``: experimental in TRL 1.16, stable from 1.18."""
    for module in ("trl.experimental.async_grpo", "trl.async_grpo"):
        with contextlib.suppress(ImportError):
            transfer = __import__(f"{module}.weight_transfer", fromlist=["WeightTransferClient"])
            client = __import__(f"{module}.vllm_client", fromlist=["VLLMClient"])
            return transfer.WeightTransferClient, client.VLLMClient
    raise ServerError("weight_transfer='nccl' needs TRL's async GRPO weight transfer (TRL >= 1.16) and vLLM >= 0.17")


class NCCLSender:
    """vLLM's NCCL engine (server started with ``--weight-transfer-config '{"backend": "nccl"}'``), sent from the
    trainer's thread straight from its parameters. Not run on this project's CPU machines (docs/async.md)."""

    deferred = False

    def __init__(self, client: ServerClient):
        self.client = client
        self.transfer: Any = None

    def _connect(self, walk: Callable[[], Iterable[tuple[str, torch.Tensor]]]) -> None:
        # the server sizes its receive buffers from the names, dtypes and shapes: one walk to collect them (a
        # gather per parameter under ZeRO-3 / FSDP, as TRL's own first sync)
        metadata = [(name, str(t.dtype).removeprefix("torch."), list(t.shape)) for name, t in walk()]
        info = {"names": [m[0] for m in metadata], "dtype_names": [m[1] for m in metadata]}
        info["shapes"] = [m[2] for m in metadata]
        transfer_client, vllm_client = _trl_weight_transfer()
        self.transfer = transfer_client(vllm_client(self.client.base_url), info)
        self.transfer.init_weight_transfer()

    def send(self, walk: Callable[[], Iterable[tuple[str, torch.Tensor]]], version: int) -> None:
        if self.transfer is None:
            self._connect(walk)
        self.client.pause()
        try:
            self.transfer.send_weights(iter(walk()))
            self.client.set_weight_version(version)  # TRL's transfer finishes the update without a version
            self.client.reset_prefix_cache()
        finally:
            self.client.resume()

    def close(self) -> None:
        if self.transfer is not None:
            self.transfer.destroy()
