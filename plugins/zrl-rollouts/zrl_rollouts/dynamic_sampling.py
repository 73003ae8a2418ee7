"""``dynamic_sampling`` (DAPO, Yu et al. 2025): groups whose rewards are all equal carry no gradient signal; they are
replaced by groups of freshly sampled prompts until the batch is full or ``max_resamples`` rounds were spent, and
whatever stays uninformative is dropped from the loss (masked, and left out of the reward statistics).

It wraps any other rollout strategy (``inner``), which still produces the completions. It implements the core's
:class:`~zrl_plugins.framework.protocols.GroupFilter` whole: the trainer hands it the scored batch and a ``score_more``
callable (only the trainer can generate and score); the loop, the draws and the decisions are here, the row surgery
is ``ScoredBatch.replace_groups`` / ``drop_groups``. Each round generates a whole batch of new prompts per process,
as verl's DAPO does with its generation batches.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from zrl_plugins.sdk import ConfigError, RefillContext, ScoredBatch, ValidatesSetup, uninformative_groups


class DynamicSampling:
    """Rollout strategy: ``inner``'s completions, with uninformative groups re-sampled (DAPO dynamic sampling).

    Args:
        inner: the rollout strategy that generates (any registered name; ``default`` = TRL's generation).
        inner_kwargs: keyword arguments of ``inner``.
        max_resamples: extra generation rounds per batch at most; then the remaining uninformative groups are
            dropped from the loss and the step trains on what there is (logged).
        seed: seed of the replacement prompts (drawn per process; the draw count is checkpointed).
        plugin_manager: the manager that builds this strategy (passed by it), which also builds ``inner``; default:
            the process-wide one.
    """

    def __init__(
        self,
        inner: str = "default",
        inner_kwargs: dict[str, Any] | None = None,
        max_resamples: int = 3,
        seed: int = 0,
        plugin_manager: Any = None,
    ):
        if inner == "dynamic_sampling":
            raise ValueError("dynamic_sampling cannot wrap itself")
        if max_resamples < 0:
            raise ValueError(f"max_resamples must be >= 0, got {max_resamples}")
        if plugin_manager is None:
            from zrl_plugins.sdk import get_plugin_manager

            plugin_manager = get_plugin_manager()
        self.inner_name = inner
        self.inner = plugin_manager.load_component("rollout", inner, **(inner_kwargs or {}))
        self.max_resamples = max_resamples
        self.seed = seed
        self.draws = 0
        self.replaces_generation = self.inner.replaces_generation
        self.off_policy = self.inner.off_policy
        if callable(getattr(self.inner, "observe_mismatch", None)):
            self.observe_mismatch = self.inner.observe_mismatch

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        return self.inner(prompts, trainer)

    def validate(self, trainer: Any) -> None:
        args = trainer.args
        rows = args.per_device_train_batch_size * args.steps_per_generation
        if rows % args.num_generations:
            raise ConfigError(
                f"dynamic_sampling swaps whole groups within a process: per_device_train_batch_size x "
                f"steps_per_generation ({rows}) must be a multiple of num_generations ({args.num_generations})"
            )
        if isinstance(self.inner, ValidatesSetup):
            self.inner.validate(trainer)

    def refill(self, batch: ScoredBatch, ctx: RefillContext) -> tuple[ScoredBatch, dict[str, float]]:
        """DAPO's loop: replace this process's uninformative groups with groups of fresh prompts for up to
        ``max_resamples`` rounds — every process runs the same number of rounds, since generation and scoring are
        collective — then leave what is still uninformative out of the loss and the statistics."""
        keep = self.keep_groups(ctx.group_rewards(batch)).cpu()
        initially_kept = keep.float().mean().item()
        rounds = 0
        while rounds < self.max_resamples and ctx.any_process(not bool(keep.all())):
            rounds += 1
            picks = self.draw(batch.groups, len(ctx.dataset), ctx.process_index)
            fresh = ctx.score_more([ctx.dataset[i] for i in picks for _ in range(batch.group_size)])
            fresh_keep = self.keep_groups(ctx.group_rewards(fresh)).cpu()
            targets = (~keep).nonzero().flatten().tolist()
            sources = fresh_keep.nonzero().flatten().tolist()[: len(targets)]
            batch = batch.replace_groups(fresh, targets[: len(sources)], sources)
            keep[targets[: len(sources)]] = True
        batch = batch.drop_groups(keep)
        stats = {
            "resample_rounds_mean": float(rounds),
            "kept_groups_initial": initially_kept,
            "kept_groups_final": keep.float().mean().item(),
        }
        return batch, stats

    def keep_groups(self, grouped_rewards: torch.Tensor) -> torch.Tensor:
        """One bool per group (rows of ``grouped_rewards``): keep it, i.e. its rewards are not all equal."""
        return ~uninformative_groups(grouped_rewards.reshape(-1), grouped_rewards.size(1))

    def draw(self, count: int, population: int, process_index: int) -> list[int]:
        """``count`` data set indices for replacement prompts; reproducible per seed, process and draw."""
        rng = random.Random(f"{self.seed}-{process_index}-{self.draws}")
        self.draws += 1
        return [rng.randrange(population) for _ in range(count)]

    def state_dict(self) -> dict[str, Any]:
        inner = self.inner.state_dict() if callable(getattr(self.inner, "state_dict", None)) else None
        return {"draws": self.draws, "inner": inner}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.draws = int(state["draws"])
        if state.get("inner") is not None and callable(getattr(self.inner, "load_state_dict", None)):
            self.inner.load_state_dict(state["inner"])
