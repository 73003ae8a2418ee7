"""Padding-free passes and token-budget micro-batches give the padded pass's numbers on the same batch: per-token
log-probs and entropies within 1e-5, the loss within 1e-6 relative, gradients within 1e-5 relative — for every
TRL loss type and zrl normalizer, with the reference model and KL in the loss, with LoRA, for PPO's values and
critic loss; the packed mask is shown to matter (a leaking one fails the comparison and is refused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import TINY_TRAINING, char_count_reward, launch_two_cpu_processes, perturbed_batch
from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
from zrl_plugins.framework.errors import ConfigError
from zrl_plugins.trainers import packing, token_budget

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
NORMALIZERS = ("grpo", "batch", "dr_grpo", "lite_ppo", "none", "rloo")
OPTIONS = dict(TINY_TRAINING, beta=0.04, epsilon_high=0.28, max_steps=1, max_completion_length=10)
BUDGET = 24  # tokens: every batch below splits into several parts, some sequences alone


# ---------------------------------------------------------------------------------------------------- layout
def _padded(prompt_lengths, completion_lengths, prompt_width, completion_width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rows = len(prompt_lengths)
    ids = torch.randint(3, 100, (rows, prompt_width + completion_width), generator=generator)
    mask = torch.zeros_like(ids)
    for b, (p, c) in enumerate(zip(prompt_lengths, completion_lengths, strict=True)):
        mask[b, prompt_width - p : prompt_width + c] = 1
    return ids, mask


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 7), st.integers(0, 9)), min_size=1, max_size=9),
    st.booleans(),
    st.integers(0, 30),
)
def test_pack_then_unpack_is_the_identity_on_real_tokens(lengths, one_row, capacity):
    prompts, completions = zip(*lengths, strict=True)
    ids, mask = _padded(prompts, completions, 7, 9)
    rows = packing.pack(ids, mask, 9, one_row=one_row, capacity=capacity)
    assert rows.real_tokens == int(mask.sum())
    assert rows.input_ids.numel() <= ids.numel()  # never wider than the padded rectangle
    torch.testing.assert_close(rows.unpack(rows.input_ids), ids * mask)
    # every sequence restarts its positions at 0 and the labels are exactly its completion tokens
    positions = rows.unpack(rows.position_ids)
    for b in range(len(prompts)):
        torch.testing.assert_close(positions[b][mask[b].bool()], torch.arange(prompts[b] + completions[b]))
    assert int((rows.labels != packing.IGNORE).sum()) == sum(completions)
    if not one_row:  # rows no longer than the longest sequence
        assert rows.input_ids.size(1) <= max(max(capacity, 1), max(p + c for p, c in lengths))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 7), st.integers(0, 9)), min_size=1, max_size=9))
def test_trimmed_rows_keep_every_real_token_and_the_labels(lengths):
    prompts, completions = zip(*lengths, strict=True)
    ids, mask = _padded(prompts, completions, 7, 9)
    rows = packing.trim(ids, mask, 9)
    assert rows.input_ids.size(1) == max(completions) + max(prompts)  # the common padding is gone
    torch.testing.assert_close(rows.unpack(rows.input_ids) * mask, ids * mask)
    assert int((rows.labels != packing.IGNORE).sum()) == sum(completions)


def test_the_layout_is_the_one_with_fewer_positions():
    from zrl_plugins.trainers.padding_free import PaddingFree

    settings = PaddingFree()
    skewed = _padded([4] * 4, [1, 2, 3, 40], 4, 40)  # three short answers share a row
    assert isinstance(settings.layout(*skewed, 40), packing.PackedRows)
    even = _padded([4] * 4, [9, 10, 10, 9], 4, 10)  # nothing to gain: the padded pass, trimmed
    assert isinstance(settings.layout(*even, 10), packing.TrimmedRows)
    assert isinstance(PaddingFree(one_row=True).layout(*even, 10), packing.PackedRows)  # flash: always packed


def test_a_mask_with_holes_is_refused():
    ids, mask = _padded([3, 2], [4, 4], 4, 4)
    mask[0, 5] = 0
    with pytest.raises(ValueError, match="holes"):
        packing.pack(ids, mask, 4)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=16), st.integers(1, 80))
def test_budget_parts_fit_and_balance(lengths, budget):
    parts = token_budget.plan(lengths, budget, lambda k: k)
    assert sorted(i for part in parts for i in part) == list(range(len(lengths)))
    assert all(part for part in parts)
    for part in parts:  # within the budget, or a single over-long sequence
        assert len(part) == 1 or sum(lengths[i] for i in part) <= budget
    # the fewest parts: one fewer would not fit
    if len(parts) > 1 and all(length <= budget for length in lengths):
        fewer = token_budget.balanced_parts(lengths, len(parts) - 1)
        assert any(sum(lengths[i] for i in part) > budget for part in fewer)
    # another process needing more parts: this one splits into as many
    more = token_budget.plan(lengths, budget, lambda k: k + 1)
    assert len(more) == min(len(parts) + 1, len(lengths))


# ---------------------------------------------------------------------------------------------------- numbers
def _trainers(tmp_path, model, data, trainer_class=ZRLGRPOTrainer, config_class=ZRLConfig, **options):
    made = []
    for name, extra in (("padded", {}), ("packed", {"padding_free": True})):
        args = config_class(output_dir=str(tmp_path / name), **{**OPTIONS, **options, **extra})
        made.append(trainer_class(model, char_count_reward, args=args, train_dataset=data))
    padded, packed = made
    packed.model.load_state_dict(padded.model.state_dict())
    for trainer in made:
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
    return padded, packed


def _batch(trainer, data, seed=0):
    torch.manual_seed(seed)
    rows = [dict(data[i]) for i in (0, 9, 3, 14) for _ in range(2)]  # one- and two-digit prompts: left padding
    batch = perturbed_batch(trainer._generate_and_score_completions(rows))
    assert batch["prompt_mask"].sum(1).unique().numel() > 1  # prompts of different lengths
    return batch


def _loss_and_grads(trainer, batch, budget=None):
    trainer.model.zero_grad()
    if budget is None:
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
    else:
        loss = trainer._backward_in_parts(trainer.model, batch, budget)
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _assert_same(reference, other, what):
    (loss, grads), (other_loss, other_grads) = reference, other
    assert abs(loss.item()) > 1e-6, "a vacuous zero loss proves nothing"
    torch.testing.assert_close(other_loss, loss, rtol=1e-6, atol=1e-8, msg=f"{what}: loss")
    assert other_grads.keys() == grads.keys()
    for name, grad in grads.items():
        error = (other_grads[name] - grad).norm() / grad.norm().clamp(min=1e-12)
        assert error <= 1e-5, f"{what}: gradient of {name} off by {error:.2e} (relative)"


def _assert_forward_same(padded, packed, batch):
    mask = batch["completion_mask"].bool()
    with torch.no_grad():
        a, b = padded._forward_completions(padded.model, batch), packed._forward_completions(packed.model, batch)
    torch.testing.assert_close(b.logps[mask], a.logps[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(b.entropies[mask], a.entropies[mask], atol=1e-5, rtol=0)
    assert (b.logps[~mask] == 0).all() and (b.entropies[~mask] == 0).all()  # the padded layout's zeros
    return a, b


def _check_all_ways(padded, packed, batch):
    """padded (reference) = padding-free = padding-free in token-budget parts = padded in token-budget parts, with
    padding_free's own choice of layout and with packing forced (these short batches would otherwise be trimmed)."""
    reference = _loss_and_grads(padded, batch)
    settings = packed.padding_free
    for layout in (settings.layout, settings.pack):
        settings.layout = layout
        _assert_forward_same(padded, packed, batch)
        _assert_same(reference, _loss_and_grads(packed, batch), "padding_free")
        _assert_same(reference, _loss_and_grads(packed, batch, BUDGET), "padding_free + max_tokens_per_microbatch")
        assert packed._metrics["train"]["microbatch_parts"][-1] >= 3
    del settings.layout  # the class's method again
    _assert_same(reference, _loss_and_grads(padded, batch, BUDGET), "max_tokens_per_microbatch")


def test_one_row_with_varlen_boundaries(tmp_path, tiny_model_path, arithmetic_dataset):
    """The flash-attention layout: every sequence in one row, with the boundaries varlen kernels take (TRL's SFT
    collator's cu_seq_lens / max_length / seq_idx). On sdpa the kernels ignore them and the mask does the work."""
    padded, packed = _trainers(tmp_path, tiny_model_path, arithmetic_dataset)
    packed.padding_free.one_row = True
    batch = _batch(padded, arithmetic_dataset)
    ids, mask = (
        torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
        torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
    )
    rows = packed.padding_free.pack(ids, mask, batch["completion_ids"].size(1))
    boundaries = rows.varlen_kwargs()
    lengths = mask.sum(1).tolist()
    assert boundaries["cu_seq_lens_q"].tolist() == [0, *torch.tensor(lengths).cumsum(0).tolist()]
    assert boundaries["max_length_q"] == max(lengths)
    assert boundaries["seq_idx"].tolist() == [[i for i, n in enumerate(lengths) for _ in range(n)]]
    _check_all_ways(padded, packed, batch)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_trl_loss_type_with_kl_in_the_loss(loss_type, tmp_path, tiny_model_path, arithmetic_dataset):
    padded, packed = _trainers(tmp_path, tiny_model_path, arithmetic_dataset, loss_type=loss_type)
    batch = _batch(padded, arithmetic_dataset)
    assert "ref_per_token_logps" in batch and packed.objective_setup.kl_in_loss
    _check_all_ways(padded, packed, batch)


@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_every_normalizer(normalizer, tmp_path, tiny_model_path, arithmetic_dataset):
    kwargs = {"normalizer_kwargs": {"max_length": 10}} if normalizer == "dr_grpo" else {}
    padded, packed = _trainers(tmp_path, tiny_model_path, arithmetic_dataset, normalizer=normalizer, **kwargs)
    _check_all_ways(padded, packed, _batch(padded, arithmetic_dataset))


def test_reference_and_old_logps_are_computed_packed(tmp_path, tiny_model_path, arithmetic_dataset):
    """The no-gradient passes (π_old for a correction / several iterations, the reference model) pack too, and
    give the padded numbers."""
    padded, packed = _trainers(tmp_path, tiny_model_path, arithmetic_dataset, num_iterations=2)
    batches = []
    for trainer in (padded, packed):
        torch.manual_seed(0)
        batches.append(trainer._generate_and_score_completions([dict(arithmetic_dataset[i]) for i in range(8)]))
    mask = batches[0]["completion_mask"].bool()
    torch.testing.assert_close(batches[1]["completion_ids"], batches[0]["completion_ids"])
    for key in ("old_per_token_logps", "ref_per_token_logps"):
        torch.testing.assert_close(batches[1][key][mask], batches[0][key][mask], atol=1e-5, rtol=0, msg=key)


def test_lora(tmp_path, tiny_model_path, arithmetic_dataset):
    from peft import LoraConfig

    made = []
    for name, extra in (("padded", {}), ("packed", {"padding_free": True})):
        args = ZRLConfig(output_dir=str(tmp_path / name), **{**OPTIONS, **extra})
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        torch.manual_seed(0)  # the same random adapters
        made.append(
            ZRLGRPOTrainer(
                tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset, peft_config=lora
            )
        )
    padded, packed = made
    for trainer in made:
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
    batch = _batch(padded, arithmetic_dataset)
    reference = _loss_and_grads(padded, batch)
    assert reference[1] and all("lora_" in name for name in reference[1])
    _check_all_ways(padded, packed, batch)


@pytest.mark.parametrize("critic_mode", ["separate", "shared"])
def test_ppo_values_and_critic_loss(critic_mode, tmp_path, tiny_model_path, arithmetic_dataset):
    from zrl_plugins import ZRLPPOConfig, ZRLPPOTrainer

    options = dict(critic_mode=critic_mode, critic_learning_rate=1e-2, vf_coef=0.7, cliprange_value=0.05, beta=0.0)
    padded, packed = _trainers(tmp_path, tiny_model_path, arithmetic_dataset, ZRLPPOTrainer, ZRLPPOConfig, **options)
    batch = _batch(padded, arithmetic_dataset)
    batch["old_values"] = batch["old_values"] + 0.1 * torch.randn_like(batch["old_values"])  # value clipping active
    a, b = _assert_forward_same(padded, packed, batch)
    mask = batch["completion_mask"].bool()
    torch.testing.assert_close(b.values[mask], a.values[mask], atol=1e-5, rtol=0)
    # V_old at rollout time, packed the same way
    torch.testing.assert_close(
        packed._rollout_values(batch)[mask], padded._rollout_values(batch)[mask], atol=1e-5, rtol=0
    )
    _check_all_ways(padded, packed, batch)
    assert any(name.startswith(("zrl_critic.", "zrl_value_head.")) for name in _loss_and_grads(packed, batch)[1])
    assert packed._metrics["train"]["critic/value_loss"]


# ---------------------------------------------------------------------------------------------------- the mask
def test_a_leaking_mask_fails_the_comparison_and_is_refused(monkeypatch, tmp_path, tiny_model_path, arithmetic_dataset):
    """The control: with transformers' packed-sequence detection switched off, sequences in a row attend to the
    ones before them. The comparison of the tests above then fails, and the trainer's check refuses the model."""
    import transformers.masking_utils as masking_utils

    padded, packed = _trainers(tmp_path, tiny_model_path, arithmetic_dataset)
    batch = _batch(padded, arithmetic_dataset)
    packed.padding_free.verified.add(id(packed.model))  # skip the check: measure what the leak does
    packed.padding_free.one_row = True  # every sequence after the first shares a row with another
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    with pytest.raises(AssertionError):
        _assert_forward_same(padded, packed, batch)

    packed.padding_free.verified.clear()
    with pytest.raises(ConfigError, match="does not keep packed sequences apart"):
        packed.compute_loss(packed.model, batch)


@pytest.mark.parametrize("precision", ["bf16_autocast", "bf16_weights"])
def test_the_check_passes_in_low_precision(precision, tmp_path, tiny_model_path, arithmetic_dataset):
    """Rounding is not a leak: the check runs without autocast and allows bf16 weights their rounding (an earlier
    version refused SmolLM2 under bf16 autocast)."""
    options = {"bf16": True} if precision == "bf16_autocast" else {"model_init_kwargs": {"dtype": "bfloat16"}}
    padded, packed = _trainers(tmp_path, tiny_model_path, arithmetic_dataset, **options)
    batch = _batch(padded, arithmetic_dataset)
    with packed.compute_loss_context_manager():
        loss = packed.compute_loss(packed.model, batch)
    assert torch.isfinite(loss) and id(packed.model) in packed.padding_free.verified


def test_refusals_before_training(tmp_path, tiny_model_path, arithmetic_dataset):
    with pytest.raises(ConfigError, match="max_tokens_per_microbatch"):
        ZRLConfig(output_dir=str(tmp_path), max_tokens_per_microbatch=0)
    args = ZRLConfig(
        output_dir=str(tmp_path), **{**OPTIONS, "max_tokens_per_microbatch": 64, "top_entropy_quantile": 0.2}
    )
    with pytest.raises(ConfigError, match="top_entropy_quantile"):
        ZRLGRPOTrainer(tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    model.config._attn_implementation = "paged|sdpa"
    args = ZRLConfig(output_dir=str(tmp_path), **{**OPTIONS, "padding_free": True})
    with pytest.raises(ConfigError, match="attention backend 'paged|sdpa'"):
        ZRLGRPOTrainer(model, char_count_reward, args=args, train_dataset=arithmetic_dataset)


# ---------------------------------------------------------------------------------------------------- training
def test_training_steps_equal_the_padded_run(tmp_path, tiny_model_path, arithmetic_dataset):
    """Two optimizer steps through the Trainer (TRL's buffered batches, 2 gradient-accumulation steps): the same
    losses, gradient norms and weights with padding_free and a token budget as padded."""
    runs = {}
    for name, extra in (("padded", {}), ("packed", {"padding_free": True, "max_tokens_per_microbatch": BUDGET})):
        # SGD: weights move linearly in the gradient (Adam's first steps are ±lr whatever the gradient's size)
        options = {**OPTIONS, "max_steps": 2, "gradient_accumulation_steps": 2, "per_device_train_batch_size": 4}
        options["optim"] = "sgd"
        args = ZRLConfig(output_dir=str(tmp_path / name), **{**options, **extra})
        trainer = ZRLGRPOTrainer(tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset)
        trainer.train()
        losses = [(e["loss"], e["grad_norm"]) for e in trainer.state.log_history if "loss" in e]
        runs[name] = (losses, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, trainer)
    (padded_losses, padded_weights, _), (losses, weights, packed) = runs["padded"], runs["packed"]
    assert len(losses) == 2
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(padded_losses), rtol=1e-5, atol=1e-7)
    for name, weight in padded_weights.items():
        torch.testing.assert_close(weights[name], weight, rtol=1e-5, atol=1e-7, msg=name)
    assert any(entry.get("microbatch_parts", 1) > 1 for entry in packed.state.log_history)


@pytest.mark.slow
def test_two_processes_reduce_the_same_gradient(tiny_model_path, tmp_path):
    """DDP over 2 CPU processes: the all-reduced gradient of padding_free + token budget (as many parts on each
    process, the reduction in the last part's backward) equals the padded run's."""
    script = Path(__file__).parent / "scripts" / "padding_free_two_processes.py"
    result = launch_two_cpu_processes(script, tiny_model_path, str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert rank["parts"] and min(rank["parts"]) > 1
        assert len(rank["padded"]) == len(rank["packed"]) > 0
        for padded, packed in zip(rank["padded"], rank["packed"], strict=True):
            assert abs(packed - padded) <= 1e-5 * abs(padded), (packed, padded)
    assert ranks[0]["padded"] == ranks[1]["padded"]  # one gradient on both processes


# ---------------------------------------------------------------------------------------------------- entry points
def test_yaml_and_command_line(tmp_path):
    from zrl_plugins.trainers.config import parse_config

    config = tmp_path / "run.yaml"
    config.write_text(
        "output_dir: out\nuse_cpu: true\nbf16: false\npadding_free: true\nmax_tokens_per_microbatch: 4096\n"
    )
    (parsed,) = parse_config([ZRLConfig], ["--config", str(config)])
    assert parsed.padding_free is True and parsed.max_tokens_per_microbatch == 4096
    (parsed,) = parse_config(
        [ZRLConfig], ["--output_dir", "o", "--use_cpu", "true", "--bf16", "false", "--padding_free", "true"]
    )
    assert parsed.padding_free is True and parsed.max_tokens_per_microbatch is None


@pytest.mark.parametrize("method", ["dr_grpo", "ppo_max"])
def test_recipes_train_with_both_options(method, tmp_path):
    from tests.test_recipes import TINY_OVERRIDES
    from zrl_plugins.apps.recipe import run

    flags = ["--padding_free", "true", "--max_tokens_per_microbatch", "40"]
    summary = run(method, ["--preset", "cpu-demo", *TINY_OVERRIDES, *flags, "--output_dir", str(tmp_path)])
    steps = [h for h in summary["log_history"] if "loss" in h]
    assert len(steps) == 2 and all(step["microbatch_parts"] > 1 for step in steps)
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["config"]["padding_free"] is True and written["config"]["max_tokens_per_microbatch"] == 40
