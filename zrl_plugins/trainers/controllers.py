"""The coefficient controllers that move once per optimizer step: the KL penalty's β and TRL's adaptive entropy
coefficient. Each is a plain object: ``observe`` takes what a training micro-batch showed (the loss returns it),
``step`` runs once per optimizer step with a function that sums a tensor over all processes
(:class:`StepControllers`, the Trainer callback that does both). Testable without a trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from transformers import TrainerCallback

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sum over all processes


class KLControl:
    """Collects the KL the policy showed since the last optimizer step and hands its token mean to the KL penalty's
    controller at the step (over all processes; ``n_steps`` = samples per optimizer step, as in TRL's PPO)."""

    def __init__(self, kl_penalty: Any, samples_per_step: int):
        self.kl_penalty = kl_penalty
        self.samples_per_step = samples_per_step
        self.window = torch.zeros(2)  # (sum of observed KL · tokens, tokens)

    def observe(self, kl_sum: torch.Tensor, tokens: torch.Tensor) -> None:
        self.window += torch.stack([kl_sum.detach().float().cpu(), tokens.detach().float().cpu()])

    def step(self, reduce: Reduce) -> None:
        controller = self.kl_penalty.controller
        if controller.beta == 0.0 and not self.kl_penalty.requires_reference:
            return
        window = reduce(self.window).cpu()
        self.window.zero_()
        if window[1] > 0 and torch.isfinite(window).all():  # a non-finite step must not poison β for good
            controller.update(float(window[0] / window[1]), n_steps=self.samples_per_step)


class EntropyControl:
    """TRL's entropy bonus coefficient. Static unless ``adaptive``: then at each optimizer step the token-mean
    entropy of the step (all processes) moves it by ``delta`` towards ``target``, within [``coef_min``,
    ``coef_max``], and the bonus applies only while the last step's entropy is at or below the target."""

    def __init__(self, coef: float, adaptive: bool, target: float, delta: float, coef_min: float, coef_max: float):
        self.coef = coef
        self.adaptive = adaptive
        self.target, self.delta, self.coef_min, self.coef_max = target, delta, coef_min, coef_max
        self.last_world_entropy = math.inf
        self.window: torch.Tensor | None = None  # (sum of entropy · tokens, tokens) since the last step

    @classmethod
    def from_config(cls, args: Any) -> EntropyControl:
        return cls(
            coef=args.entropy_coef,
            adaptive=args.use_adaptive_entropy,
            target=args.entropy_target,
            delta=args.entropy_coef_delta,
            coef_min=args.entropy_coef_min,
            coef_max=args.entropy_coef_max,
        )

    @property
    def enabled(self) -> bool:
        return self.coef != 0.0 or self.adaptive

    def applied_coef(self) -> float:
        """The coefficient of this micro-batch's bonus."""
        if self.adaptive and self.last_world_entropy > self.target:
            return 0.0
        return self.coef

    def observe(self, entropies: torch.Tensor, mask: torch.Tensor) -> None:
        if self.adaptive:
            stats = torch.stack([(entropies * mask).sum(), mask.sum()]).detach()
            self.window = stats if self.window is None else self.window + stats

    def step(self, reduce: Reduce) -> None:
        if self.window is None:
            return
        totals = reduce(self.window)
        world_entropy = (totals[0] / totals[1].clamp(min=1.0)).item()
        if world_entropy <= self.target:
            self.coef = min(self.coef + self.delta, self.coef_max)
        else:
            self.coef = max(self.coef - self.delta, self.coef_min)
        self.last_world_entropy = world_entropy
        self.window = None


class ControllerAttributes:
    """TRL's trainer attribute names for controller state, which TRL's own checkpoint code (and zrl's) reads and
    writes, kept pointing at the controller objects (``entropy_control``, ``kl_control``) so there is one state."""

    entropy_control: EntropyControl
    kl_control: KLControl

    @property
    def entropy_coef(self) -> float:
        return self.entropy_control.coef

    @entropy_coef.setter
    def entropy_coef(self, value: float) -> None:
        self.entropy_control.coef = value

    @property
    def _last_world_entropy(self) -> float:
        return self.entropy_control.last_world_entropy

    @_last_world_entropy.setter
    def _last_world_entropy(self, value: float) -> None:
        self.entropy_control.last_world_entropy = value

    @property
    def _kl_window(self) -> torch.Tensor:
        return self.kl_control.window

    @_kl_window.setter
    def _kl_window(self, value: torch.Tensor) -> None:
        self.kl_control.window = value


class StepControllers(TrainerCallback):
    """The KL and entropy controllers of a trainer: fed by every training micro-batch (:meth:`observe`), moved once
    per optimizer step (:meth:`step`, which the Trainer calls after the step's last backward and before the optimizer
    moves), their new coefficients handed to ``log`` as TRL logs them (``kl_coef``, ``entropy_coef``)."""

    def __init__(self, kl: KLControl, entropy: EntropyControl, reduce: Reduce, log: Callable[[dict], None]):
        self.kl, self.entropy, self.reduce, self.log = kl, entropy, reduce, log

    def observe(self, kl: tuple[torch.Tensor, torch.Tensor] | None, entropy: tuple[torch.Tensor, ...] | None) -> None:
        if kl is not None:
            self.kl.observe(*kl)
        if entropy is not None:
            self.entropy.observe(*entropy)

    def step(self) -> None:
        self.kl.step(self.reduce)
        metrics = {"kl_coef": self.kl.kl_penalty.controller.beta}
        if self.entropy.enabled:
            self.entropy.step(self.reduce)
            metrics["entropy_coef"] = self.entropy.coef
        self.log(metrics)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step()
