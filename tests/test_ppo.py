"""ZRLPPOTrainer: GAE, value clipping and Welford arithmetic by hand (docs/methods.md#ppo), then runs on the tiny
model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_TRAINING, char_count_reward, launch_two_cpu_processes, tiny_config
from zrl_plugins.builtins.estimators import GAEEstimator, ReinforcePlusPlusEstimator, discounted_sum, gae
from zrl_plugins.framework.errors import ConfigError
from zrl_plugins.trainers.critic import clipped_value_loss, is_critic_key
from zrl_plugins.trainers.running_stats import RunningMoments


# ---------------------------------------------------------------------------------------------------- arithmetic
def test_gae_by_hand_with_padding_gamma_1_lambda_095():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0], [-0.1, 0.2, 7.0, 7.0]])  # values past the mask must be ignored
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0], [1.0, 0.5, 3.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: δ2 = 1 − 0.7 = 0.3; δ1 = 0.7 − 0.6 = 0.1 → A1 = 0.1 + 0.95·0.3; δ0 = 0.1 → A0 = 0.1 + 0.95·A1
    a1 = 0.1 + 0.95 * 0.3
    expected_0 = [0.1 + 0.95 * a1, a1, 0.3, 0.0]
    # row 1: δ1 = 0.2 − 0.5 = −0.3; δ0 = −0.1 + 0.5 − 1.0 = −0.6 → A0 = −0.6 + 0.95·(−0.3)
    expected_1 = [-0.6 + 0.95 * -0.3, -0.3, 0.0, 0.0]
    torch.testing.assert_close(advantages, torch.tensor([expected_0, expected_1]))
    torch.testing.assert_close(
        returns, torch.tensor([[expected_0[0] + 0.5, a1 + 0.6, 1.0, 0.0], [expected_1[0] + 1.0, 0.2, 0.0, 0.0]])
    )


def test_gae_with_lambda_1_is_the_monte_carlo_return_minus_the_value():
    rewards = torch.tensor([[0.0, -0.2, 1.0]])
    values = torch.tensor([[0.3, 0.1, 0.4]])
    mask = torch.ones(1, 3)
    advantages, returns = GAEEstimator(gamma=1.0, lam=1.0).token_advantages(rewards, values, mask)
    torch.testing.assert_close(returns, torch.tensor([[0.8, 0.8, 1.0]]))
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 0.7, 0.6]]))


def test_reinforce_pp_discounted_returns():
    rewards, mask = torch.tensor([[1.0, 2.0, 4.0, 8.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantages, _ = ReinforcePlusPlusEstimator(gamma=0.5).token_advantages(rewards, None, mask)
    torch.testing.assert_close(advantages, torch.tensor([[1 + 0.5 * 2 + 0.25 * 4, 2 + 0.5 * 4, 4.0, 0.0]]))
    torch.testing.assert_close(discounted_sum(rewards, torch.ones(1, 4), 1.0), torch.tensor([[15.0, 14.0, 12.0, 8.0]]))


def test_value_loss_clipping_arithmetic():
    values = torch.tensor([1.5, 0.9, 0.5])
    old = torch.tensor([1.0, 1.0, 1.0])
    returns = torch.tensor([2.0, 0.0, 2.0])
    loss, clipped = clipped_value_loss(values, old, returns, clip=0.2)
    # 1: unclipped (1.5−2)² = 0.25, clipped V = 1.2 → 0.64 wins; 2: V inside the range → 0.81 both;
    # 3: unclipped (0.5−2)² = 2.25, clipped V = 0.8 → 1.44 (the max keeps the unclipped one)
    torch.testing.assert_close(loss, torch.tensor([0.32, 0.405, 1.125]))
    assert clipped.tolist() == [True, False, False]
    loss, clipped = clipped_value_loss(values, old, returns, clip=None)
    torch.testing.assert_close(loss, torch.tensor([0.125, 0.405, 1.125]))
    assert not clipped.any()


def test_welford_merge_of_two_processes_equals_the_union():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, generator=generator) * 3 + 1, torch.randn(11, generator=generator) - 2
    merged = RunningMoments.of(a).merge(RunningMoments.of(b))
    union = torch.cat([a, b]).double()
    assert merged.count == 48
    assert merged.mean == pytest.approx(union.mean().item(), abs=1e-12)
    assert merged.var == pytest.approx(union.var().item(), rel=1e-12)  # unbiased, like torch.var

    # update() with a gather that returns both processes' (count, mean, M2) rows, over two steps
    running = RunningMoments()
    for step_a, step_b in ((a[:20], b[:5]), (a[20:], b[5:])):
        other = RunningMoments.of(step_b)
        row = torch.tensor([[other.count, other.mean, other.m2]], dtype=torch.float64)
        running.update(step_a, gather=lambda local, row=row: torch.cat([local, row]))
    assert running.count == 48
    assert running.std == pytest.approx(union.std().item(), rel=1e-12)
    restored = RunningMoments()
    restored.load_state_dict(running.state_dict())
    assert restored.state_dict() == running.state_dict()


def test_welford_ignores_unscorable_rewards():
    moments = RunningMoments.of(torch.tensor([1.0, float("nan"), 3.0]))
    assert (moments.count, moments.mean, moments.var) == (2, 2.0, 2.0)


# ---------------------------------------------------------------------------------------------------- trainer
def _ppo_config(tmp_path, **overrides):
    from zrl_plugins import ZRLPPOConfig

    return ZRLPPOConfig(
        **{"output_dir": str(tmp_path / "out"), **TINY_TRAINING, "critic_learning_rate": 1e-2, **overrides}
    )


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _actor(trainer):
    """The policy's own parameters (the critic is attached to it as a child module)."""
    return {n: p for n, p in trainer.model.named_parameters() if not is_critic_key(n)}


def test_ppo_with_every_option_on(tmp_path, tiny_model_path, arithmetic_dataset):
    from datasets import Dataset

    from zrl_plugins import ZRLPPOTrainer

    pretrain = Dataset.from_list([{"text": f"{a} plus {a} is {2 * a}."} for a in range(20)])
    args = _ppo_config(
        tmp_path,
        max_steps=3,
        critic_warmup_steps=1,
        reward_scaling="mean_std",
        reward_clip=1.5,
        whiten_advantages=True,
        advantage_clip=2.0,
        cliprange_value=0.2,
        ptx_coef=0.1,
        num_iterations=2,
        steps_per_generation=2,
        beta=0.05,
        kl_penalty="k1",
        advantage_estimator_kwargs={"gamma": 1.0, "lam": 0.9},
        kl_penalty_kwargs={"controller": "adaptive", "controller_kwargs": {"target_kl": 0.1, "horizon": 100}},
    )
    trainer = ZRLPPOTrainer(
        tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset, pretrain_dataset=pretrain
    )
    assert trainer.kl_penalty.placement == "reward"
    actor_before, critic_before = {n: p.detach().clone() for n, p in _actor(trainer).items()}, _params(trainer.critic)

    trainer.args.max_steps = 1  # step 1: the critic warm-up
    trainer.train()
    assert all(torch.equal(p, actor_before[n]) for n, p in _actor(trainer).items())
    assert any(not torch.equal(p, critic_before[n]) for n, p in trainer.critic.named_parameters())

    logs = trainer.state.log_history[0]
    for key in (
        "critic/explained_variance",
        "critic/value_mean",
        "critic/return_mean",
        "critic/value_loss",
        "critic/value_clip_fraction",
        "critic/grad_norm",
        "policy/perplexity",
        "policy/ref_perplexity",
        "kl",
        "approx_kl",
        "clip_ratio/region_mean",
        "reward",
        "completions/mean_length",
        "reward/running_std",
        "reward/scaled_mean",
        "ptx_loss",
        "kl_coef",
    ):
        assert key in logs and torch.isfinite(torch.tensor(logs[key])), key
    assert logs["learning_rate"] == 0.0
    assert abs(logs["reward/scaled_mean"]) <= 1.5 + 1e-6
    assert trainer.reward_moments.count == 16  # one generation batch: 8 rows x 2 steps per generation


def test_ppo_updates_the_actor_after_warmup_and_rewards_reach_the_last_token(
    tmp_path, tiny_model_path, arithmetic_dataset
):
    from zrl_plugins import ZRLPPOTrainer, hookimpl
    from zrl_plugins.framework.plugins import ZRLPluginManager

    seen = {}

    class Spy:
        @hookimpl
        def zrl_on_rollout_batch(self, trainer, batch):
            seen["advantages"] = batch["advantages"]
            seen["mask"] = batch["completion_mask"]

    pm = ZRLPluginManager()
    pm.register_plugin(Spy(), name="spy")
    args = _ppo_config(tmp_path, max_steps=1, beta=0.0, whiten_advantages=False, reward_scaling="none")
    trainer = ZRLPPOTrainer(
        tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset, plugin_manager=pm
    )
    assert trainer.ref_model is None  # β = 0: no reference model
    actor_before = {n: p.detach().clone() for n, p in _actor(trainer).items()}
    trainer.train()
    assert any(not torch.equal(p, actor_before[n]) for n, p in _actor(trainer).items())
    # zero-initialised value head, no KL, λ = 0.95, γ = 1: A_t = Σ (0.95)^l δ, δ = r at the last token only
    advantages, mask = seen["advantages"], seen["mask"].float()
    assert advantages.shape == mask.shape
    assert torch.all(advantages[mask == 0] == 0)
    lengths = mask.sum(-1).long()
    last = advantages[torch.arange(len(lengths)), lengths - 1]
    first = advantages[:, 0]
    torch.testing.assert_close(first, last * 0.95 ** (lengths - 1).float())


def test_reinforce_pp_needs_no_critic(tmp_path, tiny_model_path, arithmetic_dataset):
    from zrl_plugins import ZRLPPOTrainer

    args = _ppo_config(tmp_path, max_steps=1, advantage_estimator="reinforce_pp")
    trainer = ZRLPPOTrainer(tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset)
    assert trainer.critic is None
    trainer.train()
    assert "critic/value_loss" not in trainer.state.log_history[0]


def test_normalizer_kinds_are_checked_per_trainer(tmp_path, tiny_model_path, arithmetic_dataset):

    from zrl_plugins import ZRLGRPOTrainer, ZRLPPOTrainer

    with pytest.raises(ConfigError, match="not a per-token advantage estimator"):
        ZRLPPOTrainer(
            tiny_model_path,
            char_count_reward,
            args=_ppo_config(tmp_path, normalizer="grpo"),
            train_dataset=arithmetic_dataset,
        )
    with pytest.raises(ConfigError, match="per-token advantage estimator for ZRLPPOTrainer"):
        ZRLGRPOTrainer(
            tiny_model_path,
            char_count_reward,
            args=tiny_config(tmp_path, normalizer="gae"),
            train_dataset=arithmetic_dataset,
        )
    with pytest.raises(ConfigError, match="pretrain_dataset"):
        ZRLPPOTrainer(
            tiny_model_path,
            char_count_reward,
            args=_ppo_config(tmp_path, ptx_coef=0.1),
            train_dataset=arithmetic_dataset,
        )
    with pytest.raises(ConfigError, match="reward_scaling"):
        _ppo_config(tmp_path, reward_scaling="minmax")


@pytest.mark.parametrize("critic_mode", ["separate", "shared"])
def test_resume_gives_the_identical_next_step(critic_mode, tmp_path, tiny_model_path, arithmetic_dataset):
    """Actor, critic, optimizer, reward statistics and KL controller all come back: step 3 after a resume from
    checkpoint 2 equals step 3 of the uninterrupted run."""
    from zrl_plugins import ZRLPPOTrainer

    controller = {"controller": "adaptive", "controller_kwargs": {"target_kl": 0.01, "horizon": 10}}
    common = dict(
        max_steps=3,
        save_strategy="steps",
        save_steps=2,
        beta=0.05,
        kl_penalty="k1",
        kl_penalty_kwargs=controller,
        critic_mode=critic_mode,
    )
    first = ZRLPPOTrainer(
        tiny_model_path, char_count_reward, args=_ppo_config(tmp_path / "a", **common), train_dataset=arithmetic_dataset
    )
    first.train()
    checkpoint = tmp_path / "a" / "out" / "checkpoint-2"
    assert (checkpoint / "critic" / "model.safetensors").exists()

    resumed = ZRLPPOTrainer(
        tiny_model_path, char_count_reward, args=_ppo_config(tmp_path / "b", **common), train_dataset=arithmetic_dataset
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))

    step3 = next(h for h in first.state.log_history if h.get("step") == 3 and "loss" in h)
    step3_resumed = next(h for h in resumed.state.log_history if h.get("step") == 3 and "loss" in h)
    for key in ("loss", "reward", "critic/value_loss", "critic/explained_variance", "kl", "kl_coef"):
        assert step3_resumed[key] == pytest.approx(step3[key], rel=1e-5, abs=1e-7), key
    assert resumed.reward_moments.state_dict() == pytest.approx(first.reward_moments.state_dict())
    assert resumed.kl_penalty.controller.beta == pytest.approx(first.kl_penalty.controller.beta)
    for (name, p), q in zip(first.critic.named_parameters(), resumed.critic.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)
    for p, q in zip(_actor(first).values(), _actor(resumed).values(), strict=True):
        torch.testing.assert_close(p, q)


@pytest.mark.slow
def test_two_processes_keep_one_critic(tiny_model_path, tmp_path):
    script = Path(__file__).parent / "scripts" / "ppo_two_processes.py"
    result = launch_two_cpu_processes(script, tiny_model_path, str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"ppo_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["critic_changed"] and ranks[0]["actor_changed"]
    # gradients averaged over processes: both copies of the critic (and the actor) stay identical
    assert ranks[0]["critic_checksum"] == pytest.approx(ranks[1]["critic_checksum"], rel=1e-6)
    assert ranks[0]["actor_checksum"] == pytest.approx(ranks[1]["actor_checksum"], rel=1e-6)
    # Welford statistics merged over both processes' rows: 2 steps x 2 processes x 4 completions
    assert ranks[0]["reward_moments"] == ranks[1]["reward_moments"]
    assert ranks[0]["reward_moments"]["count"] == 16


def test_shared_critic_is_a_head_on_the_policy_backbone(tmp_path, tiny_model_path, arithmetic_dataset):
    from zrl_plugins import ZRLPPOTrainer
    from zrl_plugins.trainers.critic import ValueHead

    args = _ppo_config(tmp_path, max_steps=2, critic_mode="shared", vf_coef=0.5, learning_rate=0.0)
    trainer = ZRLPPOTrainer(tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset)
    assert isinstance(trainer.critic, ValueHead)
    hidden = trainer.model.config.hidden_size
    assert sum(p.numel() for p in trainer.critic.parameters()) == hidden + 1  # the head only: no backbone copy
    head_before = trainer.critic.weight.detach().clone()
    trainer.train()
    assert not torch.equal(trainer.critic.weight, head_before)  # the head learns at critic_learning_rate
    groups = trainer.optimizer.param_groups
    critic_ids = {id(p) for g in groups if g.get("zrl_critic") for p in g["params"]}
    assert critic_ids == {id(p) for p in trainer.critic.parameters()}
    assert all(g["lr"] == 0.0 for g in groups if not g.get("zrl_critic"))
    assert "critic/value_loss" in next(h for h in trainer.state.log_history if "loss" in h)
    with pytest.raises(ConfigError, match="needs critic_mode='separate'"):
        _ppo_config(tmp_path, critic_mode="shared", critic_model_name_or_path=tiny_model_path)


@pytest.mark.parametrize("critic_mode", ["separate", "shared"])
def test_a_critic_inside_the_policy_gives_the_loss_and_gradients_of_separate_models(
    critic_mode, tmp_path, tiny_model_path, arithmetic_dataset
):
    """The critic attached to the policy (one module for the engine to shard) computes exactly what a policy and a
    critic kept apart would: the clipped surrogate + vf_coef · clipped value loss, both token means, by hand."""
    import copy

    from tests.helpers import perturbed_batch
    from zrl_plugins import ZRLPPOTrainer
    from zrl_plugins.trainers.critic import detached_value_model

    args = _ppo_config(
        tmp_path, critic_mode=critic_mode, vf_coef=0.7, cliprange_value=0.05, beta=0.0, reward_scaling="none"
    )
    trainer = ZRLPPOTrainer(tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    batch = perturbed_batch(trainer._generate_and_score_completions([dict(arithmetic_dataset[i]) for i in range(8)]))
    batch["old_values"] = batch["old_values"] + 0.1 * torch.randn_like(batch["old_values"])  # value clipping active
    with detached_value_model(trainer.model) as attached:
        policy, critic = copy.deepcopy(trainer.model), copy.deepcopy(attached)
    for module in (policy, critic):
        module.zero_grad()

    # by hand, on separate modules
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    length, mask = batch["completion_ids"].size(1), batch["completion_mask"].float()
    # the class's own forward: TRL patched the instance's (fused LM head), and that patch calls the original model
    out = type(policy).forward(
        policy, input_ids=ids, attention_mask=attention, output_hidden_states=True, use_cache=False
    )
    logits = out.logits[:, -length - 1 : -1] / args.temperature
    logps = torch.log_softmax(logits.float(), -1).gather(-1, batch["completion_ids"].unsqueeze(-1)).squeeze(-1)
    ratio = torch.exp(logps - batch["old_per_token_logps"])
    advantages = batch["advantages"]
    surrogate = -torch.min(ratio * advantages, ratio.clamp(1 - args.epsilon, 1 + args.epsilon) * advantages)
    if critic_mode == "shared":
        values = critic(out.hidden_states[-1])
    else:
        values = critic(input_ids=ids, attention_mask=attention).logits[..., 0]
    values = values[:, -length - 1 : -1].float()
    old, returns, clip = batch["old_values"], batch["returns"], args.cliprange_value
    value_loss = 0.5 * torch.max((values - returns) ** 2, (old + (values - old).clamp(-clip, clip) - returns) ** 2)
    tokens = batch["num_items_in_batch"]
    expected = ((surrogate * mask).sum() + args.vf_coef * (value_loss * mask).sum()) / tokens
    expected.backward()

    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    ours = dict(trainer.model.named_parameters())
    prefix = "zrl_value_head." if critic_mode == "shared" else "zrl_critic."
    pairs = [(n, p) for n, p in policy.named_parameters()] + [(prefix + n, p) for n, p in critic.named_parameters()]
    assert len(pairs) == len(ours)
    for name, param in pairs:
        torch.testing.assert_close(ours[name].grad, param.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert any(ours[n].grad.abs().sum() > 0 for n in ours if n.startswith(prefix))  # the critic is trained


def _first_word_reward(prompts, completions, **kwargs):
    """Determined by the prompt alone: 1 for "Alpha ..." prompts, 0 for "Beta ..." ones."""
    text = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
    return [float(t.startswith("Alpha")) for t in text]


def test_the_critic_learns_a_prompt_determined_reward(tmp_path, tiny_model_path):
    """With a reward the prompt determines, the critic's explained variance 1 − Var(R − V)/Var(R) (measured on each
    new batch before the critic trains on it) rises from ~0 above 0.5: the critic machinery learns."""
    from datasets import Dataset

    from zrl_plugins import ZRLPPOTrainer

    rows = [{"prompt": f"{word} {i} says"} for i in range(12) for word in ("Alpha", "Beta")]
    args = _ppo_config(
        tmp_path,
        max_steps=24,
        num_generations=2,
        learning_rate=1e-5,
        critic_learning_rate=3e-3,
        beta=0.0,
        reward_scaling="none",
        whiten_advantages=False,
        cliprange_value=None,
        advantage_estimator_kwargs={"lam": 1.0},
    )
    trainer = ZRLPPOTrainer(tiny_model_path, _first_word_reward, args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    ev = [h["critic/explained_variance"] for h in trainer.state.log_history if "critic/explained_variance" in h]
    assert len(ev) >= 20
    assert sum(ev[:3]) / 3 < 0.3, ev  # a zero-initialised head explains nothing at first
    assert sum(ev[-5:]) / 5 > 0.5, ev
