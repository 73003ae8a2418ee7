"""Skipped iterations: what happens when a step's loss or gradients are not finite.

Trusted trainers (Megatron-LM, DeepSpeed's fp16 loss scaling) treat one non-finite step as a numerical fault of the
run — too high a learning rate, an overflow in low precision, a pathological batch — and skip it: no weight,
optimizer-state or scheduler change, on every process together, counted and reported; only a streak of them stops
the run. A plugin is never blamed for it: contract errors are kept for components that turn finite inputs into
non-finite outputs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from ..framework.errors import ZRLError

POLICIES = ("skip", "raise")


class NumericalInstabilityError(ZRLError, FloatingPointError):
    """Training produced non-finite losses or gradients (a numerical fault of the run, not of a plugin)."""


ADVICE = (
    "This is a numerical fault of the run, not of a plugin: lower the learning rate (now {lr:g}), train with fp32 "
    "weights or bf16 rather than fp16, clip gradients (max_grad_norm), or check the data of that step."
)


@dataclass
class SkipGuard:
    """Decides, once per optimizer step, whether the step is taken; counts skips; stops a streak of them.

    ``note_fault`` may be called any number of times during a step (a non-finite loss in some micro-batch, a
    non-finite critic gradient norm); ``decide`` is called once, before the optimizer step, with whether every
    process saw finite values. State (the counters) is saved in checkpoints.
    """

    policy: str = "skip"
    max_consecutive: int = 3
    skipped_total: int = 0
    consecutive: int = 0
    pending: str | None = None  # why the current step is faulty, if it is
    skip_scheduler: bool = False

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"nonfinite_policy must be one of {POLICIES}, got {self.policy!r}")
        if self.max_consecutive < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {self.max_consecutive}")

    def note_fault(self, what: str) -> None:
        self.pending = self.pending or what

    def decide(self, all_finite: bool, step: int, lr: float) -> bool:
        """Whether to skip optimizer step ``step`` (1-based); raises under ``raise`` or after a streak."""
        what, self.pending = self.pending or "a non-finite gradient on another process", None
        if all_finite:
            self.consecutive = 0
            return False
        advice = ADVICE.format(lr=lr)
        if self.policy == "raise":
            raise NumericalInstabilityError(f"step {step}: {what} (nonfinite_policy='raise'). {advice}")
        self.skipped_total += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise NumericalInstabilityError(
                f"step {step}: {what}; {self.consecutive} optimizer steps in a row were non-finite and skipped "
                f"(max_consecutive_skips={self.max_consecutive}), so training stops. {advice}"
            )
        warnings.warn(
            f"step {step}: {what}; the optimizer step was skipped on every process (no weight, optimizer-state or "
            f"scheduler change; {self.skipped_total} skipped so far, train/skipped_steps). {advice}",
            stacklevel=2,
        )
        self.skip_scheduler = True
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_total": self.skipped_total, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_total, self.consecutive = int(state["skipped_total"]), int(state["consecutive"])


def decide_step(guard: SkipGuard, norm: Any, any_process: Any, deepspeed: bool, step: int, lr: float) -> bool:
    """At the gradient-norm call just before the optimizer step: whether to drop this step's gradients (every
    process decides alike). Under DeepSpeed the engine has stepped already, so a fault can only stop the run."""
    if guard.pending is None and not (norm is None or math.isfinite(float(norm))):
        guard.note_fault(f"the gradient norm is {float(norm)}")
    all_finite = not any_process(guard.pending is not None)
    if deepspeed:
        if not all_finite:
            guard.policy = "raise"
            guard.decide(False, step, lr)
        return False
    return guard.decide(all_finite, step, lr)


def note_nonfinite_loss(loss: Any, guard: SkipGuard, deepspeed: bool, any_process: Any, step: int) -> None:
    """A non-finite training loss is a numerical fault of the step: noted on ``guard`` for the optimizer-step
    decision. DeepSpeed steps inside its backward, so there every process stops at once (``any_process(flag)``:
    whether the flag holds on some process)."""
    import torch

    if deepspeed:
        if any_process(not bool(torch.isfinite(loss))):
            raise NumericalInstabilityError(
                f"step {step}: the training loss is not finite on some process. DeepSpeed steps inside its backward, "
                "so the step cannot be skipped and training stops. This is a numerical fault of the run, not of a "
                "plugin: lower the learning rate, train in bf16 rather than fp16, or check the data of that step."
            )
    elif not torch.isfinite(loss):
        guard.note_fault(f"the training loss is {loss.item()}")


def guarded_scheduler_class(base: type, guard: SkipGuard) -> type:
    """A subclass of the scheduler class ``base`` whose ``step`` does nothing once after a skipped optimizer step
    (a subclass, so that its ``state_dict`` — what checkpoints save — is unchanged)."""

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if guard.skip_scheduler:
            guard.skip_scheduler = False
            return None
        return base.step(self, *args, **kwargs)

    return type(f"Guarded{base.__name__}", (base,), {"step": step, "_zrl_guard": guard})


class GuardedSteps:
    """The Trainer methods a zrl trainer overrides for the non-finite step guard (mixed in before TRL's trainer;
    the trainer holds the :class:`SkipGuard` as ``_nonfinite`` and a ``collective``)."""

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        """The Trainer asks for the step's gradient norm just before the optimizer step: the place to decide, on
        every process together, whether the step is taken."""
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        step, lr = self.state.global_step + 1, self._get_learning_rate()
        any_process = self.collective.any_process
        if decide_step(self._nonfinite, norm, any_process, self.is_deepspeed_enabled, step, lr):
            for param in model.parameters():
                param.grad = None  # the optimizer then leaves every weight and its state as they are
        if self.is_deepspeed_enabled:
            return norm
        self._metrics["train"]["train/skipped_steps"].append(float(self._nonfinite.skipped_total))
        return norm

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        """The Trainer's scheduler, whose ``step`` does nothing after a skipped optimizer step (its class is swapped
        for a subclass holding the guard, so its ``state_dict`` — what checkpoints save — is unchanged)."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if not getattr(type(scheduler), "_zrl_guard", None):
            scheduler.__class__ = guarded_scheduler_class(type(scheduler), self._nonfinite)
        return scheduler
