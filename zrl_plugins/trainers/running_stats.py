"""Welford running moments that merge across processes (PPO-max reward scaling)."""

from __future__ import annotations

import math
from typing import Any

import torch


class RunningMoments:
    """Count, mean and sum of squared deviations (M2) of every value seen, updated batch by batch.

    Batches and processes combine with Chan et al.'s parallel rule, so merging the moments of two processes equals
    the moments of the union of their values (and the order of the batches does not matter).
    """

    def __init__(self, count: float = 0.0, mean: float = 0.0, m2: float = 0.0):
        self.count = float(count)
        self.mean = float(mean)
        self.m2 = float(m2)

    @classmethod
    def of(cls, values: torch.Tensor) -> RunningMoments:
        """Moments of the finite entries of ``values``."""
        values = values.detach().double().flatten()
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            return cls()
        mean = values.mean()
        return cls(values.numel(), mean.item(), ((values - mean) ** 2).sum().item())

    def merge(self, other: RunningMoments) -> RunningMoments:
        """Moments of the union of the values behind ``self`` and ``other`` (a new object)."""
        count = self.count + other.count
        if count == 0:
            return RunningMoments()
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / count
        m2 = self.m2 + other.m2 + delta**2 * self.count * other.count / count
        return RunningMoments(count, mean, m2)

    def update(self, values: torch.Tensor, gather: Any = None) -> None:
        """Add ``values``; ``gather`` (e.g. ``accelerator.gather``) merges every process's batch moments first."""
        batch = RunningMoments.of(values)
        if gather is not None:
            local = torch.tensor([batch.count, batch.mean, batch.m2], dtype=torch.float64, device=values.device)
            rows = gather(local.unsqueeze(0)).view(-1, 3).cpu()
            batch = RunningMoments()
            for count, mean, m2 in rows.tolist():
                batch = batch.merge(RunningMoments(count, mean, m2))
        merged = self.merge(batch)
        self.count, self.mean, self.m2 = merged.count, merged.mean, merged.m2

    @property
    def var(self) -> float:
        """Unbiased variance (0 with fewer than two values)."""
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = float(state["count"]), float(state["mean"]), float(state["m2"])

    def __repr__(self) -> str:
        return f"RunningMoments(count={self.count:g}, mean={self.mean:.6g}, std={self.std:.6g})"
