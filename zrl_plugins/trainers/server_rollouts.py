"""Generation on a separate ``vllm serve`` process, synchronous or ahead of training (``async_rollouts``).

TRL generates through one object, ``trainer.vllm_generation`` (``sync_weights()`` then ``generate(prompt_ids)``).
:class:`ServerGeneration` is that object for a ``vllm serve`` server fed by zrl's weight transfer
(:mod:`zrl_plugins.serving`): everything downstream of generation — verifiers and their guards, group filters,
normalizers, policy losses, KL, the rollout correction between the server's log-probs and the trainer's π_old —
is the synchronous trainer's, unchanged. :class:`ServerRollouts` (mixed in before TRL's trainer) adds the three
things that make it asynchronous:

* ``get_batch_samples`` pulls the data loader up to ``max_staleness`` optimizer steps ahead and submits each
  generation batch to the :class:`~zrl_plugins.serving.stream.RolloutStream`, which generates it on the server;
* :class:`WeightPublisher` (a callback) publishes the weights after every ``weight_sync_steps`` optimizer steps;
* ``_generate_and_score_completions`` names the batch the step trains on (its step and slot), so that
  ``generate`` takes it from the stream, and logs its staleness and weight version.

Without ``async_rollouts`` (``vllm_mode="server"`` on vLLM's CPU build) the same object generates each batch when
TRL asks, from the weights of the current step: the synchronous run that ``max_staleness=0`` reproduces. Which runs
generate this way, and how the server, the sender and the stream are set up: :mod:`.server_setup`.
"""

from __future__ import annotations

import collections
import copy
import logging
from collections import deque
from contextlib import nullcontext
from typing import Any

from transformers import Trainer, TrainerCallback
from trl.distributed import DistributedBackend
from trl.generation.vllm_generation import VLLMGeneration

from ..framework.errors import ConfigError
from ..serving.launcher import LaunchedServer
from ..serving.stream import BatchKey, Generated, RolloutStream, staleness_metrics

logger = logging.getLogger(__name__)


class ServerGeneration(VLLMGeneration):
    """TRL's ``VLLMGeneration`` interface over a ``vllm serve`` process (TRL's parameter walk is inherited: PEFT
    merge, ZeRO-3 / FSDP gathering, vLLM's names)."""

    def __init__(self, trainer: Any, stream: RolloutStream, ahead: bool, server: LaunchedServer | None):
        # VLLMGeneration.__init__ would connect TRL's own client to a `trl vllm-serve` process: not called
        self.model = trainer.model
        self.accelerator = trainer.accelerator
        self.processing_class = trainer.processing_class
        self._dist = DistributedBackend(trainer.accelerator)
        self.mode = "server"
        self.enable_sleep_mode = False
        self.stream = stream
        self.ahead = ahead
        self.server = server
        self._global_step = lambda: trainer.state.global_step  # the Trainer replaces its state in train()
        self.planned: BatchKey | None = None  # set by the trainer around a planned generation batch
        self.last_planned: Generated | None = None
        self.deadline_s = 2 * stream.client.request_timeout + 60

    def publish(self, version: int) -> None:
        # looked up at each call: the PPO trainer wraps the walk to leave its critic out
        self.stream.publish(version, lambda: self._iter_named_params())

    def sync_weights(self) -> None:
        """TRL calls it before generating when the step changed. Ahead of training, the weights are published after
        optimizer steps (:class:`WeightPublisher`); otherwise (and for evaluation) the current step's are
        published now, as TRL's synchronous modes do."""
        if self.ahead and self.model.training:
            return
        step = self._global_step()
        if self.stream.published_version < step:
            self.publish(step)

    def generate(self, prompts: list[list[int]], images: Any, num_generations: int, profiler: Any = None) -> tuple:
        if images is not None and any(image is not None for image in images):
            raise ConfigError("generation on a vLLM server takes token ids only: images are not supported here")
        key, self.planned = self.planned, None
        with profiler or nullcontext():
            if key is not None and self.ahead:
                batch = self.stream.take(prompts, key.step, self.deadline_s)
            else:
                batch = self.stream.generate_now(prompts, num_generations, key)
        if key is not None:
            self.last_planned = batch
        completion_ids = [completion.token_ids for completion in batch.completions]
        # TRL keeps the first entry of each token's list (the sampled token's log-prob); None becomes NaN there
        logprobs = [[[logprob] for logprob in completion.logprobs] for completion in batch.completions]
        return prompts, completion_ids, logprobs, None

    # checkpoints: the weight version is the optimizer step (restored with the trainer state); what was generated
    # ahead at the save is not saved: it is regenerated from the resumed weights, and the resumed run says how much
    def state_dict(self) -> dict[str, Any]:
        return {"weight_version": self.stream.published_version, "in_flight": self.stream.pending()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        logger.warning(
            "async rollouts: resuming at weight version %s; %s generation batch(es) generated ahead at the save are "
            "discarded and regenerated from the resumed weights",
            state.get("weight_version"),
            state.get("in_flight"),
        )


class Lookahead:
    """The data loader read ahead by whole optimizer steps; each generation batch is submitted as it is read."""

    def __init__(self, steps_ahead: int, micro_batches_per_step: int, generate_every: int):
        self.steps_ahead = steps_ahead
        self.per_step = micro_batches_per_step
        self.generate_every = generate_every
        self.queue: deque[Any] = deque()
        self.iterator: Any = None
        self.pulled = 0  # micro-batches read so far (TRL's `_step` when each is trained on)
        self.slots: collections.Counter[int] = collections.Counter()

    def take(self, iterator: Any, num_batches: int, step: int, submit: Any) -> list[Any]:
        if iterator is not self.iterator:  # a new epoch: the previous iterator was read to its end
            self.iterator, self.queue = iterator, deque()
        while len(self.queue) < self.per_step * (1 + self.steps_ahead):
            try:
                batch = next(iterator)
            except StopIteration:
                break
            if self.pulled % self.generate_every == 0:
                trained_at = step + len(self.queue) // self.per_step
                submit(batch, BatchKey(trained_at, self.slots[trained_at]))
                self.slots[trained_at] += 1
            self.pulled += 1
            self.queue.append(batch)
        return [self.queue.popleft() for _ in range(min(num_batches, len(self.queue)))]


class WeightPublisher(TrainerCallback):
    """Publish the weights at the start of training and after every ``every`` optimizer steps."""

    def __init__(self, generation: ServerGeneration, every: int):
        self.generation = generation
        self.every = every

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.generation.publish(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step % self.every == 0:
            self.generation.publish(state.global_step)


class ServerRollouts(Trainer):
    """The Trainer overrides of server generation (a no-op unless the trainer generates on a server)."""

    vllm_generation: Any
    rollout_lookahead: Lookahead | None = None
    _planned_slots: collections.Counter[int]

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        if self.rollout_lookahead is None:  # (called by the training loop only)
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        batches = self.rollout_lookahead.take(epoch_iterator, num_batches, self.state.global_step, self._submit)
        return batches, self._get_num_items_in_batch(batches, device)

    def _submit(self, rows: list[dict[str, Any]], key: BatchKey) -> None:
        prompt_ids, _, _ = self._tokenize_prompts(copy.deepcopy([row["prompt"] for row in rows]))
        self.vllm_generation.stream.submit(prompt_ids, self.num_generations, key)

    def _prepare_inputs(self, generation_batch: Any) -> Any:
        generation = getattr(self, "vllm_generation", None)
        if not isinstance(generation, ServerGeneration) or not self.model.training:
            return super()._prepare_inputs(generation_batch)
        # TRL generates when this holds; the first generation inside is the planned batch (refills are not)
        generate_every = self.args.steps_per_generation * self.num_iterations
        planned = self._step % generate_every == 0 or self._buffered_inputs is None
        step = self.state.global_step
        if planned:
            generation.planned = BatchKey(step, self._planned_slots[step])
            self._planned_slots[step] += 1
        inputs = super()._prepare_inputs(generation_batch)
        if planned and generation.last_planned is not None:
            for name, value in staleness_metrics(generation.last_planned, step).items():
                self._metrics["train"][name].append(value)
            generation.last_planned = None
        return inputs

    def train(self, *args: Any, **kwargs: Any) -> Any:
        generation = getattr(self, "vllm_generation", None)
        if not isinstance(generation, ServerGeneration):
            return super().train(*args, **kwargs)
        try:
            return super().train(*args, **kwargs)
        except BaseException:
            if generation.server is not None:  # no orphan: a server zrl started ends with the failed run
                generation.stream.close()
                generation.server.stop()
            raise
        finally:
            discarded = generation.stream.cancel_planned()
            if self.rollout_lookahead is not None:
                self.rollout_lookahead = Lookahead(
                    self.rollout_lookahead.steps_ahead,
                    self.rollout_lookahead.per_step,
                    self.rollout_lookahead.generate_every,
                )
            if discarded:
                logger.info("async rollouts: %d generation batch(es) generated ahead were not trained on", discarded)
