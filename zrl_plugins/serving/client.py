"""The vLLM server's HTTP API as zrl uses it: readiness, token-in/token-out generation with the sampled tokens'
log-probs, and the RL weight-update endpoints (``VLLM_SERVER_DEV_MODE=1``).

Every call has a deadline, and every failure is a :class:`ServerError` that names the server's URL and what to do:
a server that died or stopped answering stops training within ``request_timeout`` seconds instead of hanging it.
Only the standard library is used, so the client works in any environment that can reach the server.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..framework.errors import ZRLError


class ServerError(ZRLError):
    """The vLLM server failed, died or did not answer in time."""


@dataclass(frozen=True)
class SamplingOptions:
    """What each generation request asks for (TRL's generation options, as the trainer resolved them)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    extra: tuple[tuple[str, Any], ...] = ()  # generation_kwargs passed through to vLLM's sampling parameters


@dataclass(frozen=True)
class Completion:
    """One sampled completion: its tokens and the log-prob the server's sampler gave each of them."""

    token_ids: list[int]
    logprobs: list[float | None]


class ServerClient:
    """Synchronous client of one ``vllm serve`` process.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        request_timeout: seconds any one request may take (generation included) before it counts as a failure.
        model: the served model name; read from ``/v1/models`` when omitted.
    """

    def __init__(self, base_url: str, request_timeout: float = 600.0, model: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.request_timeout = request_timeout
        self._model = model

    # ------------------------------------------------------------------------------------------------ transport
    def _request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.request_timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            hint = ""
            if exc.code == 404 and ("weight" in path or path in ("/pause", "/resume")):
                hint = (
                    " The server has no RL endpoints: start it with VLLM_SERVER_DEV_MODE=1 and "
                    '--weight-transfer-config \'{"backend": "zrl_shm"}\' (or let zrl start it: '
                    "vllm_server_launch=True)."
                )
            raise ServerError(
                f"the vLLM server at {self.base_url} answered {path} with {exc.code}: {detail}{hint}"
            ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            raise ServerError(
                f"the vLLM server at {self.base_url} did not answer {path} ({exc}); check that it is running and "
                f"reachable (its log says why it stopped), or raise vllm_request_timeout "
                f"(now {timeout or self.request_timeout:g} s) if it is only slow"
            ) from exc
        return json.loads(payload) if payload else None

    # ------------------------------------------------------------------------------------------------ readiness
    def alive(self) -> bool:
        try:
            self._request("GET", "/health", timeout=5)
        except ServerError:
            return False
        return True

    def wait_until_ready(self, timeout: float, is_running: Any = None) -> None:
        """Poll ``/health`` until it answers; ``is_running`` (a callable) lets a launched server's death end the wait
        at once."""
        deadline = time.monotonic() + timeout
        while not self.alive():
            if is_running is not None and not is_running():
                raise ServerError(f"the vLLM server for {self.base_url} exited while starting (see its log)")
            if time.monotonic() > deadline:
                raise ServerError(
                    f"the vLLM server at {self.base_url} was not ready after {timeout:g} s; start it first "
                    "(`vllm serve MODEL`, see docs/async.md) or raise vllm_server_timeout"
                )
            time.sleep(0.5)

    @property
    def model(self) -> str:
        if self._model is None:
            self._model = self._request("GET", "/v1/models")["data"][0]["id"]
        return self._model

    def server_info(self) -> dict[str, Any]:
        return self._request("GET", "/server_info?config_format=json")

    # ------------------------------------------------------------------------------------------------ generation
    def complete(self, prompt_ids: list[int], n: int, options: SamplingOptions, seed: int | None) -> list[Completion]:
        """``n`` samples of one tokenized prompt, with the sampled tokens' log-probs (the server's ``logprobs_mode``;
        zrl starts servers with ``processed_logprobs``, the distribution actually sampled from)."""
        body = {
            "model": self.model,
            "prompt": prompt_ids,
            "n": n,
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "top_k": options.top_k,
            "min_p": options.min_p,
            "repetition_penalty": options.repetition_penalty,
            "logprobs": 0,
            "return_token_ids": True,
            "skip_special_tokens": False,
            **dict(options.extra),
        }
        if seed is not None:
            body["seed"] = seed
        response = self._request("POST", "/v1/completions", body)
        choices = sorted(response["choices"], key=lambda choice: choice["index"])
        if len(choices) != n:
            raise ServerError(f"the vLLM server at {self.base_url} returned {len(choices)} completions, asked {n}")
        return [Completion(list(c["token_ids"]), list(c["logprobs"]["token_logprobs"])) for c in choices]

    def complete_batch(
        self, prompts: list[list[int]], n: int, options: SamplingOptions, seeds: list[int | None]
    ) -> list[list[Completion]]:
        """:meth:`complete` for each prompt, sent concurrently so that the server batches them; one seed each (a
        request's ``n`` samples get seed, seed + 1, ...: vLLM's rule)."""
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(len(prompts), 64)) as pool:
            futures = [pool.submit(self.complete, p, n, options, s) for p, s in zip(prompts, seeds, strict=True)]
            return [future.result() for future in futures]

    # ------------------------------------------------------------------------------------------------ weights
    def pause(self) -> None:
        """Stop scheduling; requests in flight finish first (``mode=wait``), so no request sees two weight versions."""
        self._request("POST", "/pause?mode=wait")

    def resume(self) -> None:
        self._request("POST", "/resume")

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._request("POST", "/init_weight_transfer_engine", {"init_info": init_info})

    def start_weight_update(self) -> None:
        self._request("POST", "/start_weight_update", {"is_checkpoint_format": True})

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._request("POST", "/update_weights", {"update_info": update_info})

    def finish_weight_update(self, version: int) -> None:
        self._request("POST", "/finish_weight_update", {"weight_version": str(version)})

    def set_weight_version(self, version: int) -> None:
        self._request("POST", "/update_weight_version", {"new_version": str(version)})

    def reset_prefix_cache(self) -> None:
        self._request("POST", "/reset_prefix_cache")

    def weight_version(self) -> str | None:
        return self._request("GET", "/weight_info")["weight_version"]
