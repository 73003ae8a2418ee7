"""Oracle values of every estimator, their properties, and the adaptive controller's arithmetic (docs/methods.md#kl)."""

from __future__ import annotations

import math

import pytest
import torch

from zrl_plugins import PluginError, get_plugin_manager, load_component

LN2 = math.log(2)
# log-probs of three sampled tokens under the policy and the reference: Δ = log π_ref − log π_θ = (−ln2, 0, ln2)
LOGP = torch.log(torch.tensor([[0.5, 0.5, 0.25]]))
REF = torch.log(torch.tensor([[0.25, 0.5, 0.5]]))

ORACLE = {
    "k1": [LN2, 0.0, -LN2],  # −Δ
    "k2": [0.5 * LN2**2, 0.0, 0.5 * LN2**2],  # ½Δ²
    "k3": [0.5 + LN2 - 1, 0.0, 2 - LN2 - 1],  # e^Δ − Δ − 1
    "low_var_kl": [0.5 + LN2 - 1, 0.0, 2 - LN2 - 1],  # k3, unclamped here
    "abs": [LN2, 0.0, LN2],  # |Δ|
}


def test_all_estimators_and_controllers_are_listed():
    pm = get_plugin_manager()
    assert set(ORACLE) | {"none"} <= set(pm.names("kl_penalty"))
    assert {"fixed", "adaptive"} <= set(pm.names("kl_controller"))
    assert pm.entry("kl_controller", "adaptive").distribution == "zrl-kl"


@pytest.mark.parametrize("name", sorted(ORACLE))
def test_oracle_values(name):
    penalty = load_component("kl_penalty", name, beta=0.1)
    torch.testing.assert_close(penalty.per_token(LOGP, REF), torch.tensor([ORACLE[name]]))


@pytest.mark.parametrize("name", sorted(ORACLE))
def test_zero_when_policy_equals_reference(name):
    logp = torch.log(torch.rand(4, 7) * 0.9 + 0.05)
    assert load_component("kl_penalty", name, beta=0.1).per_token(logp, logp.clone()).abs().max() == 0


def test_signs():
    delta = torch.linspace(-3, 3, 61)
    logp, ref = torch.zeros_like(delta), delta  # Δ = ref − logp
    for name in ("k2", "k3", "low_var_kl", "abs"):
        assert (load_component("kl_penalty", name).per_token(logp, ref) >= 0).all(), name
    k1 = load_component("kl_penalty", "k1").per_token(logp, ref)
    assert (k1[delta > 0] < 0).all() and (k1[delta < 0] > 0).all()  # k1 is unbiased, not non-negative


@pytest.mark.parametrize("name", ["k2", "k3", "abs"])
def test_convex_in_delta(name):
    delta = torch.linspace(-4, 4, 81, dtype=torch.float64)
    values = load_component("kl_penalty", name).per_token(torch.zeros_like(delta), delta)
    second_difference = values[:-2] - 2 * values[1:-1] + values[2:]
    assert (second_difference >= -1e-12).all()


def test_low_var_kl_is_clamped_at_ten():
    logp, ref = torch.tensor([0.0, 0.0]), torch.tensor([20.0, 2.0])  # k3(20) ≈ 4.85e8; k3(2) = e² − 3
    values = load_component("kl_penalty", "low_var_kl").per_token(logp, ref)
    torch.testing.assert_close(values, torch.tensor([10.0, math.exp(2) - 3]))


def test_every_estimator_takes_both_placements():
    for name in ORACLE:
        for placement in ("loss", "reward"):
            assert load_component("kl_penalty", name, beta=0.1, placement=placement).placement == placement
    with pytest.raises(PluginError, match="placement must be 'loss' or 'reward'"):
        load_component("kl_penalty", "k2", beta=0.1, placement="advantage")


@pytest.mark.parametrize(
    ("observed_kl", "expected"),
    [
        (9.0, 0.1 * (1 + 0.2 * 256 / 10000)),  # error 0.5 clipped to 0.2
        (3.0, 0.1 * (1 - 0.2 * 256 / 10000)),  # error −0.5 clipped to −0.2
        (6.6, 0.1 * (1 + 0.1 * 256 / 10000)),  # error 0.1
        (6.0, 0.1),  # on target
    ],
)
def test_adaptive_controller_update(observed_kl, expected):
    controller = load_component("kl_controller", "adaptive", beta=0.1, target_kl=6.0, horizon=10000)
    controller.update(observed_kl, n_steps=256)
    assert controller.beta == pytest.approx(expected, rel=1e-12)


def test_adaptive_controller_state_round_trip_and_k3_with_it():
    penalty = load_component(
        "kl_penalty", "k3", beta=0.05, controller="adaptive", controller_kwargs={"target_kl": 0.1, "horizon": 100}
    )
    for kl in (0.5, 0.01, 0.2):
        penalty.controller.update(kl, n_steps=10)
    fresh = load_component("kl_controller", "adaptive", beta=1.0)
    fresh.load_state_dict(penalty.controller.state_dict())
    assert fresh.beta == penalty.controller.beta and fresh.target_kl == 0.1 and fresh.horizon == 100
    # 0.05 · 1.02 · 0.98 · 1.02
    assert penalty.controller.beta == pytest.approx(0.05 * 1.02 * 0.98 * 1.02)


def test_bad_controller_options():
    with pytest.raises(PluginError, match="target_kl and horizon must be positive"):
        load_component("kl_penalty", "k2", beta=0.1, controller="adaptive", controller_kwargs={"target_kl": 0})
    with pytest.raises(PluginError, match="unknown kl_controller 'adaptiv'.*Did you mean 'adaptive'"):
        load_component("kl_penalty", "k2", beta=0.1, controller="adaptiv")


def test_low_var_kl_has_a_finite_gradient_where_delta_is_huge():
    from zrl_kl.estimators import low_var_kl

    logp = torch.tensor([-200.0, -1.0], requires_grad=True)  # Δ = 199: exp overflows without verl's clamp
    ref = torch.tensor([-1.0, -1.0])
    value = low_var_kl(logp, ref)
    value.sum().backward()
    assert torch.isfinite(value).all() and value[0] == 10.0 and value[1] == 0.0
    assert torch.isfinite(logp.grad).all()
