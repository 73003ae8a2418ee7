"""``dynamic_sampling`` (DAPO, Yu et al. 2025): groups whose rewards are all equal carry no gradient signal; they are
replaced by groups of freshly sampled prompts until the batch is full or ``max_resamples`` rounds were spent, and
whatever stays uninformative is dropped from the loss (masked, and left out of the reward statistics).

It wraps any other rollout strategy (``inner``), which still produces the completions; the trainer does the
re-sampling and the row surgery (``zrl_plugins.group_filter``) because only it can score completions. Each round
generates a whole batch of new prompts per process, as verl's DAPO does with its generation batches.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from zrl_plugins.errors import ConfigError
from zrl_plugins.group_filter import uninformative_groups


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
            from zrl_plugins.plugins import get_plugin_manager

            plugin_manager = get_plugin_manager()
        self.inner_name = inner
        self.inner = plugin_manager.load_component("rollout", inner, **(inner_kwargs or {}))
        self.max_resamples = max_resamples
        self.seed = seed
        self.draws = 0
        self.replaces_generation = self.inner.replaces_generation
        self.off_policy = self.inner.off_policy
        if callable(getattr(self.inner, "importance_weights", None)):
            self.importance_weights = self.inner.importance_weights

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
        validate = getattr(self.inner, "validate", None)
        if validate is not None:
            validate(trainer)

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
