"""Start ``vllm serve`` as a child of the trainer, on a free loopback port, that never outlives it.

The server gets ``SIGTERM`` when the trainer's process dies for any reason, ``SIGKILL`` included (Linux's
parent-death signal, set in the child before vLLM starts), and on a normal exit (:meth:`LaunchedServer.stop`, also
registered with ``atexit``); vLLM's API server then shuts down its own engine processes. The server runs in a process
group of its own, so stopping it stops all of them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .client import ServerClient, ServerError
from .vllm_engine import BACKEND

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def parse_cpus(cpus: str) -> set[int]:
    """``"0"``, ``"0-3"``, ``"0,2-3"`` -> the set of core numbers."""
    cores: set[int] = set()
    for part in cpus.split(","):
        first, _, last = part.strip().partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


def _child_setup(cpus: set[int] | None) -> Callable[[], None]:
    def setup() -> None:
        _die_with_parent()
        if cpus:  # every server process (API server, engine core, workers) on these cores, not only vLLM's OMP threads
            os.sched_setaffinity(0, cpus)

    return setup


@dataclass
class ServerSettings:
    """How zrl starts a server (the config's ``vllm_*`` fields, resolved by the trainer)."""

    model: str
    max_model_len: int | None = None
    dtype: str = "auto"
    seed: int = 0
    enforce_eager: bool = True
    max_num_seqs: int | None = None
    cpus: str | None = None  # the server's cores (its affinity and VLLM_CPU_OMP_THREADS_BIND), e.g. "0" or "0-3"
    kv_cache_gib: int | None = None  # VLLM_CPU_KVCACHE_SPACE on vLLM's CPU build
    gpu_memory_utilization: float | None = None
    extra_args: list[str] = field(default_factory=list)


@dataclass
class LaunchedServer:
    process: subprocess.Popen
    client: ServerClient
    log_path: Path

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if not self.running():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


def server_command(settings: ServerSettings, port: int) -> list[str]:
    try:
        importlib.metadata.version("vllm")
        command = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", settings.model]
    except importlib.metadata.PackageNotFoundError:
        # vLLM's CPU build is the distribution `vllm-cpu`, whose `vllm` CLI looks up the version of `vllm` and fails;
        # the API server's module takes the same arguments
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", settings.model]
    command += ["--host", "127.0.0.1", "--port", str(port), "--served-model-name", "zrl-policy"]
    command += ["--weight-transfer-config", json.dumps({"backend": BACKEND})]
    # the log-probs of the distribution actually sampled from (after temperature), as TRL's colocate engine reports
    command += ["--logprobs-mode", "processed_logprobs", "--seed", str(settings.seed), "--dtype", settings.dtype]
    # TRL's sampling options are sent with every request; the model's generation_config must not add its own
    command += ["--generation-config", "vllm", "--disable-log-stats", "--uvicorn-log-level", "warning"]
    if settings.enforce_eager:
        command.append("--enforce-eager")
    if settings.max_model_len:
        command += ["--max-model-len", str(settings.max_model_len)]
    if settings.max_num_seqs:
        command += ["--max-num-seqs", str(settings.max_num_seqs)]
    if settings.gpu_memory_utilization is not None:
        command += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    return command + list(settings.extra_args)


def launch(settings: ServerSettings, startup_timeout: float, request_timeout: float) -> LaunchedServer:
    """Start the server and wait until it answers; on failure the error quotes the end of its log."""
    port = free_port()
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
    if settings.cpus is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = settings.cpus
    if settings.kv_cache_gib is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(settings.kv_cache_gib)
    log_file = tempfile.NamedTemporaryFile("w", prefix="zrl-vllm-server-", suffix=".log", delete=False)  # noqa: SIM115
    process = subprocess.Popen(
        server_command(settings, port),
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    log_file.close()
    server = LaunchedServer(process, ServerClient(f"http://127.0.0.1:{port}", request_timeout), Path(log_file.name))
    atexit.register(server.stop)
    try:
        server.client.wait_until_ready(startup_timeout, is_running=server.running)
    except ServerError as exc:
        server.stop()
        raise ServerError(f"{exc}\n--- end of the server's log ({server.log_path}) ---\n{server.log_tail()}") from None
    return server
