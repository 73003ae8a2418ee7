"""The KL and entropy controllers as plain objects (hand-computed steps), and the rule that they move only at an
optimizer step: computing a loss, even in training mode with gradients in sync, leaves both coefficients alone."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import tiny_config
from zrl_plugins.trainers.controllers import EntropyControl, KLControl, StepControllers


class RecordingController:
    def __init__(self, beta):
        self.beta = beta
        self.updates = []

    def update(self, observed_kl, n_steps):
        self.updates.append((observed_kl, n_steps))


class Penalty:
    def __init__(self, beta, requires_reference=True):
        self.controller = RecordingController(beta)
        self.requires_reference = requires_reference


def _two_processes(other: torch.Tensor):
    """A reduce that adds a second process's window to this one's."""
    return lambda x: x + other


def test_kl_control_feeds_the_token_mean_of_the_window_over_processes():
    control = KLControl(Penalty(0.1), samples_per_step=16)
    control.observe(torch.tensor(2.0), torch.tensor(4.0))
    control.observe(torch.tensor(1.0), torch.tensor(1.0))
    control.step(_two_processes(torch.tensor([3.0, 5.0])))
    assert control.kl_penalty.controller.updates == [(pytest.approx((2.0 + 1.0 + 3.0) / (4 + 1 + 5)), 16)]
    assert control.window.tolist() == [0.0, 0.0]


def test_kl_control_skips_a_non_finite_or_empty_window_and_an_inactive_penalty():
    control = KLControl(Penalty(0.1), samples_per_step=8)
    control.observe(torch.tensor(math.nan), torch.tensor(3.0))
    control.step(_two_processes(torch.zeros(2)))
    control.step(_two_processes(torch.zeros(2)))  # nothing observed since
    assert control.kl_penalty.controller.updates == [] and control.window.tolist() == [0.0, 0.0]
    inactive = KLControl(Penalty(0.0, requires_reference=False), samples_per_step=8)
    inactive.observe(torch.tensor(1.0), torch.tensor(2.0))
    inactive.step(lambda x: pytest.fail("an inactive penalty must not reduce"))
    assert inactive.kl_penalty.controller.updates == []


def test_adaptive_entropy_control_moves_by_delta_towards_the_target_within_bounds():
    control = EntropyControl(coef=0.05, adaptive=True, target=1.0, delta=0.02, coef_min=0.01, coef_max=0.08)
    assert control.enabled and control.applied_coef() == 0.0  # TRL: no bonus before the first measured step
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    control.observe(torch.tensor([[0.5, 1.5], [0.1, 9.0]]), mask)  # this process: 2.1 over 3 tokens
    control.step(_two_processes(torch.tensor([1.9, 2.0])))  # world: 4.0 / 5 = 0.8 <= 1.0
    assert control.last_world_entropy == pytest.approx(0.8)
    assert control.coef == pytest.approx(0.07) and control.applied_coef() == pytest.approx(0.07)
    control.observe(torch.tensor([[0.5, 0.5], [0.5, 0.0]]), mask)
    control.step(_two_processes(torch.zeros(2)))
    assert control.coef == pytest.approx(0.08)  # 0.09 capped at coef_max
    for _ in range(5):
        control.observe(torch.full((2, 2), 3.0), mask)  # above the target: down, and no bonus meanwhile
        control.step(_two_processes(torch.zeros(2)))
    assert control.coef == pytest.approx(0.01) and control.applied_coef() == 0.0
    control.step(lambda x: pytest.fail("nothing observed: no step"))


def test_static_entropy_coefficient_never_moves():
    control = EntropyControl(coef=0.05, adaptive=False, target=1.0, delta=0.02, coef_min=0.0, coef_max=1.0)
    control.observe(torch.ones(2, 2), torch.ones(2, 2))
    control.step(lambda x: pytest.fail("a static coefficient has nothing to reduce"))
    assert control.coef == 0.05 and control.applied_coef() == 0.05
    assert not EntropyControl(0.0, False, 1.0, 0.02, 0.0, 1.0).enabled


def test_computing_a_loss_moves_no_controller(tmp_path, tiny_model_path, arithmetic_dataset):
    from zrl_plugins import ZRLGRPOTrainer

    entropy = dict(use_adaptive_entropy=True, entropy_coef=0.05, entropy_target=10.0, entropy_coef_delta=0.02)
    kl = dict(beta=0.1, kl_penalty_kwargs={"controller": "adaptive", "controller_kwargs": {"target_kl": 1e-6}})
    args = tiny_config(tmp_path, verifiers=["last_number"], **entropy, **kl)
    trainer = ZRLGRPOTrainer(tiny_model_path, args=args, train_dataset=arithmetic_dataset)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # what the training loop sets
    batch = trainer._generate_and_score_completions([dict(arithmetic_dataset[i]) for i in range(8)])
    assert trainer.accelerator.sync_gradients
    for _ in range(2):
        trainer.compute_loss(trainer.model, batch)
    assert trainer.entropy_coef == 0.05 and trainer.kl_penalty.controller.beta == 0.1
    trainer.controllers.step()  # what the optimizer step calls
    assert trainer.entropy_coef == pytest.approx(0.07) and trainer.kl_penalty.controller.beta != 0.1


def test_step_controllers_feed_on_observations_and_move_only_at_step():
    """The callback alone, no trainer: observations accumulate; ``step`` moves β and the entropy coefficient on the
    windows summed over processes, logs the new coefficients, and empties the windows."""
    kl = KLControl(Penalty(0.1), samples_per_step=8)
    entropy = EntropyControl(coef=0.05, adaptive=True, target=1.0, delta=0.02, coef_min=0.0, coef_max=1.0)
    logged = []
    controllers = StepControllers(kl, entropy, _two_processes(torch.tensor([1.0, 2.0])), logged.append)
    controllers.observe(
        (torch.tensor(3.0), torch.tensor(6.0)), (torch.tensor([[0.5, 2.0]]), torch.tensor([[1.0, 1.0]]))
    )
    controllers.observe(None, None)  # a micro-batch with nothing to observe
    assert kl.kl_penalty.controller.updates == [] and entropy.coef == 0.05 and logged == []
    controllers.step()
    assert kl.kl_penalty.controller.updates == [(pytest.approx((3.0 + 1.0) / (6.0 + 2.0)), 8)]
    # entropy over both processes: (0.5 + 2.0 + 1.0) / (2 + 2) = 0.875 <= target 1.0, so coef rises by delta
    assert entropy.coef == pytest.approx(0.07) and entropy.last_world_entropy == pytest.approx(0.875)
    assert logged == [{"kl_coef": 0.1, "entropy_coef": pytest.approx(0.07)}]
    assert kl.window.tolist() == [0.0, 0.0] and entropy.window is None
