"""Generation batches produced ahead of the trainer on a vLLM server, never more than ``max_staleness`` policy
versions behind the step that trains on them.

Who does what:

* the **trainer thread** submits each generation batch as soon as its rows leave the data loader (up to
  ``max_staleness`` optimizer steps ahead), publishes its weights after optimizer steps (version = the number of
  optimizer steps taken), and takes each batch back, in order, when it trains on it;
* the **stream thread** generates the submitted batches in order. Before each one it waits until the trainer has
  published a version no older than ``step - max_staleness`` (``step``: the optimizer step that will train on the
  batch), loads the newest published weights into the server if they are newer than the server's, and generates
  the whole batch from one version. Each batch carries that version.

A batch trained at step ``s`` was generated from version ``v >= s - max_staleness``: the bound holds by construction,
whatever slows the trainer (a slow verifier delays the next publication, so the stream waits). With
``max_staleness=0`` every batch waits for the weights of its own step: the synchronous run, step for step.

Generation is seeded per prompt from the batch's key (its step and slot), so the same batch gets the same samples
whether it is generated ahead or on demand.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .client import Completion, SamplingOptions, ServerClient, ServerError


class WeightSender(Protocol):
    """Moves a published version of the trainer's weights into the server (:mod:`zrl_plugins.serving.weights`)."""

    deferred: bool  # True: send a snapshot later, from the stream thread; False: send at once, from the trainer

    def send(self, walk: Callable[[], Iterable[tuple[str, torch.Tensor]]], version: int) -> None:
        """Load the tensors ``walk()`` yields into the server as ``version`` (it may walk more than once)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class BatchKey:
    """Names a generation batch across processes and resumes: the optimizer step that trains on it and its slot
    among that step's generation batches (``on_demand``: a batch generated outside the plan, e.g. a refill)."""

    step: int
    slot: int
    on_demand: bool = False


@dataclass
class Generated:
    """A generated batch: completions per row (rows in the order submitted) and the weight version that made them."""

    key: BatchKey
    prompt_ids: list[list[int]]
    completions: list[Completion]
    version: int
    wait_s: float = 0.0  # how long the trainer waited for it


@dataclass
class _Ticket:
    key: BatchKey
    prompt_ids: list[list[int]]
    group_size: int
    required_version: int
    result: Generated | None = None
    submitted_at: float = field(default_factory=time.monotonic)


def prompt_seeds(base_seed: int, key: BatchKey, process_index: int, count: int, group_size: int) -> list[int]:
    """One seed per prompt (vLLM seeds a request's n samples seed, seed+1, ...), a function of the batch's key only."""
    seeds = []
    for prompt in range(count):
        text = f"{base_seed}/{process_index}/{key.step}/{key.slot}/{int(key.on_demand)}/{prompt}".encode()
        seeds.append(int.from_bytes(hashlib.blake2b(text, digest_size=6).digest(), "big") * group_size)
    return seeds


def unique_prompts(prompt_ids: list[list[int]], group_size: int) -> tuple[list[list[int]], int]:
    """The prompts of consecutive groups of ``group_size`` equal rows (TRL's layout), and the samples per prompt;
    rows that are not in such groups are asked one sample each."""
    if group_size > 1 and len(prompt_ids) % group_size == 0:
        heads = prompt_ids[::group_size]
        if all(prompt_ids[i] == heads[i // group_size] for i in range(len(prompt_ids))):
            return heads, group_size
    return prompt_ids, 1


class RolloutStream:
    """Generates submitted batches on a server in a thread of its own (see the module's docstring).

    Args:
        client: the server.
        sender: how published weights reach the server; ``None`` on processes that do not send (all but the main
            one): they wait until the server reports a new enough version.
        options: sampling options of every request.
        max_staleness: how many versions a batch may lag behind the step that trains on it.
        seed: base of the per-prompt seeds.
        process_index: this process's index (part of the seeds).
        server_alive: returns False once a server zrl started has exited (ends any wait at once).
    """

    def __init__(
        self,
        client: ServerClient,
        sender: WeightSender | None,
        options: SamplingOptions,
        max_staleness: int,
        seed: int = 0,
        process_index: int = 0,
        server_alive: Callable[[], bool] | None = None,
    ):
        self.client = client
        self.sender = sender
        self.options = options
        self.max_staleness = max_staleness
        self.seed = seed
        self.process_index = process_index
        self.server_alive = server_alive or (lambda: True)
        self.server_version = -1  # what the server holds (as far as this process knows)
        self.published_version = -1
        self._snapshot: tuple[int, dict[str, torch.Tensor]] | None = None  # newest published, not yet sent
        self._planned: deque[_Ticket] = deque()  # submitted, not yet taken by the trainer
        self._todo: deque[_Ticket] = deque()  # submitted, not yet generated
        self._cond = threading.Condition()
        self._server_lock = threading.Lock()  # one user of the server at a time: no request sees a weight change
        self._error: BaseException | None = None
        self._closed = False
        self._on_demand = 0
        self.discarded = 0  # batches generated or submitted ahead that training never took
        self._thread = threading.Thread(target=self._run, name="zrl-rollout-stream", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------------ trainer side
    def submit(self, prompt_ids: list[list[int]], group_size: int, key: BatchKey) -> None:
        ticket = _Ticket(key, prompt_ids, group_size, required_version=max(0, key.step - self.max_staleness))
        with self._cond:
            self._planned.append(ticket)
            self._todo.append(ticket)
            self._cond.notify_all()

    def publish(self, version: int, walk: Callable[[], Iterable[tuple[str, torch.Tensor]]]) -> None:
        """Publish the trainer's weights (``walk()`` yields them by name) as ``version``. Every process must call it
        (walking the parameters may be a collective); only the sending process keeps them."""
        if self.sender is None or not self.sender.deferred:
            if self.sender is None:
                for _ in walk():  # take part in the gathers
                    pass
            else:
                with self._server_lock:  # the sender pauses the server; requests in flight finish first
                    self.sender.send(walk, version)
                    self.server_version = version
        else:
            # a copy: training goes on changing the parameters while the stream thread sends this version
            snapshot = {name: tensor.detach().to("cpu", copy=True) for name, tensor in walk()}
            with self._cond:
                self._snapshot = (version, snapshot)
        with self._cond:
            self.published_version = max(self.published_version, version)
            self._cond.notify_all()

    def take(self, prompt_ids: list[list[int]], step: int, deadline_s: float) -> Generated:
        """The next planned batch, which must hold ``prompt_ids``; waits for it at most ``deadline_s`` seconds."""
        start = time.monotonic()
        with self._cond:
            if not self._planned:
                raise RuntimeError("zrl's rollout stream: training asked for a batch that was never submitted")
            ticket = self._planned[0]
            if ticket.prompt_ids != prompt_ids or ticket.key.step != step:
                raise RuntimeError(
                    f"zrl's rollout stream: the batch planned for step {ticket.key.step} is not the one step {step} "
                    "trains on (the data loader's order changed under the stream)"
                )
            while ticket.result is None:
                self._raise_if_failed()
                if ticket.required_version > self.published_version and self.sender is not None:
                    raise RuntimeError(
                        f"zrl's rollout stream: the batch of step {step} needs weights of version "
                        f"{ticket.required_version} or newer; the newest published is {self.published_version}"
                    )
                if time.monotonic() - start > deadline_s:
                    raise ServerError(
                        f"no generation batch from the vLLM server at {self.client.base_url} in {deadline_s:g} s; "
                        "it stopped answering. Restart it (or check its log) and resume from the last checkpoint"
                    )
                self._cond.wait(timeout=0.5)
            self._planned.popleft()
        result = ticket.result
        result.wait_s = time.monotonic() - start
        return result

    def generate_now(self, prompt_ids: list[list[int]], group_size: int, key: BatchKey | None = None) -> Generated:
        """Generate a batch outside the plan (evaluation, refills, synchronous runs) from the newest published
        weights, on the trainer's thread."""
        if key is None:
            self._on_demand += 1
            key = BatchKey(step=-1, slot=self._on_demand, on_demand=True)
        self._raise_if_failed()
        with self._server_lock:
            version = self._load_newest(required=self.published_version)
            completions = self._complete(prompt_ids, group_size, key)
        return Generated(key, prompt_ids, completions, version)

    def cancel_planned(self) -> int:
        """Drop every planned batch (the end of a ``train()`` call); returns how many training never took. A batch
        being generated finishes and is dropped."""
        with self._cond:
            dropped = len(self._planned)
            self.discarded += dropped
            self._planned.clear()
            self._todo.clear()
            self._cond.notify_all()
        return dropped

    def close(self) -> None:
        """Stop the thread and the sender (idempotent)."""
        self.cancel_planned()
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)
        if self.sender is not None:
            self.sender.close()

    def pending(self) -> int:
        with self._cond:
            return len(self._planned)

    # ------------------------------------------------------------------------------------------------ stream thread
    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise ServerError(f"generation on the vLLM server at {self.client.base_url} failed: {self._error}")
        if not self.server_alive():
            raise ServerError(
                f"the vLLM server at {self.client.base_url} exited; restart the run from its last checkpoint "
                "(the server's log says why it stopped)"
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not (
                    self._todo and self.published_version >= self._todo[0].required_version
                ):
                    self._cond.wait()
                if self._closed:
                    return
                ticket = self._todo.popleft()
            try:
                with self._server_lock:
                    version = self._load_newest(required=ticket.required_version)
                    completions = self._complete(ticket.prompt_ids, ticket.group_size, ticket.key)
            except BaseException as exc:
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                ticket.result = Generated(ticket.key, ticket.prompt_ids, completions, version)
                self._cond.notify_all()

    def _load_newest(self, required: int) -> int:
        """Bring the server to the newest published version (at least ``required``); returns the version it holds.
        Called with the server lock held."""
        if self.sender is None:  # another process sends: wait until the server reports the version
            deadline = time.monotonic() + self.client.request_timeout
            while self.server_version < required:
                reported = self.client.weight_version()
                self.server_version = int(reported) if reported not in (None, "") else -1
                if self.server_version < required:
                    if time.monotonic() > deadline:
                        raise ServerError(f"the server at {self.client.base_url} never reached version {required}")
                    time.sleep(0.05)
            return self.server_version
        if self.sender.deferred:
            with self._cond:
                snapshot, self._snapshot = self._snapshot, None
            if snapshot is not None and snapshot[0] > self.server_version:
                tensors = snapshot[1]
                self.sender.send(tensors.items, snapshot[0])
                self.server_version = snapshot[0]
        return self.server_version

    def _complete(self, prompt_ids: list[list[int]], group_size: int, key: BatchKey) -> list[Completion]:
        prompts, n = unique_prompts(prompt_ids, group_size)
        seeds = prompt_seeds(self.seed, key, self.process_index, len(prompts), n)
        per_prompt = self.client.complete_batch(prompts, n, self.options, seeds)
        return [completion for completions in per_prompt for completion in completions]


def staleness_metrics(batch: Generated, step: int) -> dict[str, Any]:
    """What each training step logs about the batch it trains on."""
    lag = step - batch.version
    return {
        "async/staleness": float(lag),
        "async/staleness_max": float(lag),
        "async/weight_version": float(batch.version),
        "async/wait_s": batch.wait_s,
    }
