"""nested: layer-skipped generation is exactly a smaller model's; importance-weight arithmetic; training runs."""

from __future__ import annotations

import copy
import math
import random
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from zrl_rollouts.nested import blocks, late_block, random_layers

from tests.helpers import tiny_config
from zrl_plugins import PluginError, ZRLGRPOTrainer, load_component
from zrl_plugins.framework.errors import UnknownComponentError
from zrl_plugins.framework.rollout_correction import checked_correction, mismatch_stats
from zrl_plugins.sdk import generate_with_trl

NESTED_STATS = ("is_weight_mean", "is_weight_min", "is_weight_max", "is_truncated_fraction", "behaviour_kl", "ess")


def importance_weights(old, behaviour, mask, correction, clip):
    """The weights the trainer applies for nested with ``rollout_correction=correction`` and the statistics nested
    logged, under their ``rollout/`` names (the correction and the statistics moved to the rollout_correction
    kind)."""
    component = load_component("rollout_correction", correction, **({} if correction == "none" else {"clip": clip}))
    out = component(old, behaviour, mask)
    weights, rejection = checked_correction(correction, out, old, mask)
    stats = {
        **mismatch_stats(old, behaviour, mask, weights, rejection),
        **{f"rollout/{k}": v for k, v in out.metrics.items()},
    }
    return weights, {key: stats[f"rollout/{key}"] for key in NESTED_STATS if f"rollout/{key}" in stats}


def sampling_quality(old, behaviour, mask):
    stats = mismatch_stats(old, behaviour, mask, torch.ones_like(old[:, :1]), None)
    return {"behaviour_kl": stats["rollout/behaviour_kl"], "ess": stats["rollout/ess"]}


DATA = Dataset.from_list([{"prompt": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(16)])


def digits_reward(prompts, completions, **kwargs):
    return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory):
    from zrl_plugins.apps.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("four"), num_layers=4))


def without_layers(path: str, skip: list[int], out) -> str:
    """The same weights, rebuilt as a smaller model without the layers in ``skip``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path)
    keep = [i for i in range(model.config.num_hidden_layers) if i not in skip]
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(keep)
    smaller = AutoModelForCausalLM.from_config(config)
    state = {}
    for key, value in model.state_dict().items():
        if ".layers." in key:
            index = int(key.split(".layers.")[1].split(".")[0])
            if index not in keep:
                continue
            key = key.replace(f".layers.{index}.", f".layers.{keep.index(index)}.")
        state[key] = value
    smaller.load_state_dict(state)
    smaller.generation_config = model.generation_config
    smaller.save_pretrained(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    return str(out)


def trainer_for(path, tmp_path, **overrides):
    args = tiny_config(tmp_path, max_completion_length=10, **overrides)
    return ZRLGRPOTrainer(path, digits_reward, args=args, train_dataset=DATA)


def test_greedy_generation_and_behaviour_logps_equal_a_model_built_without_the_layers(four_layers, tmp_path):
    greedy = {"generation_kwargs": {"do_sample": False}}
    nested = trainer_for(four_layers, tmp_path / "n", rollout="nested", rollout_kwargs={"layers": [2]}, **greedy)
    reference = trainer_for(without_layers(four_layers, [2], tmp_path / "small"), tmp_path / "r", **greedy)
    prompts = [DATA[i]["prompt"] for i in range(4)]

    out = nested.rollout_strategy(prompts, nested)
    expected = generate_with_trl(prompts, reference)
    assert nested.rollout_strategy.last_skipped == [2]
    assert out["completion_ids"] == expected["completion_ids"]  # token for token

    full = generate_with_trl(prompts, nested)  # sanity: skipping a layer does change the model
    assert full["completion_ids"] != out["completion_ids"]

    from trl.trainer.utils import pad

    ids = [p + c for p, c in zip(expected["prompt_ids"], expected["completion_ids"], strict=True)]
    # the behaviour log-probs are the smaller model's log-probs of the sampled tokens
    for row, (prompt, completion) in enumerate(zip(expected["prompt_ids"], expected["completion_ids"], strict=True)):
        tensor = pad([torch.tensor(ids[row])], padding_value=0)
        with torch.no_grad():
            logits = reference.model(input_ids=tensor).logits[0, len(prompt) - 1 : -1]
        logps = torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(torch.tensor(out["logprobs"][row]), logps, atol=1e-5, rtol=1e-5)


def test_no_skipped_layer_means_weights_of_exactly_one(four_layers, tmp_path):
    trainer = trainer_for(four_layers, tmp_path, rollout="nested", rollout_kwargs={"skip_ratio": 0.0})
    trainer.model.train()
    out = trainer._generate_and_score_completions([dict(DATA[i]) for i in range(2) for _ in range(4)])
    mask = out["completion_mask"].bool()
    assert trainer.rollout_strategy.last_skipped == []
    assert (out["importance_sampling_ratio"][mask] == 1.0).all()


def test_importance_weight_arithmetic():
    old = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
    behaviour = torch.log(torch.tensor([[0.25, 0.5, 0.1]]))
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding
    # token ratios 2 and 0.5; truncated at C = 1.5
    weights, stats = importance_weights(old, behaviour, mask, "token_tis", clip=1.5)
    torch.testing.assert_close(weights[:, :2], torch.tensor([[1.5, 0.5]]))
    assert stats == pytest.approx(
        {
            "is_weight_mean": 1.25,
            "is_weight_min": 0.5,
            "is_weight_max": 2.0,
            "is_truncated_fraction": 0.5,
            "behaviour_kl": 0.0,
            "ess": 1.0,
        }  # log-ratios +log 2 and −log 2: mean 0; one sequence: ESS/N = 1
    )
    # sequence weight: geometric mean of the token ratios, sqrt(2 · 0.5) = 1
    weights, stats = importance_weights(old, behaviour, mask, "seq_tis", clip=1.5)
    assert weights.shape == (1, 1) and weights.item() == pytest.approx(1.0)
    # the same with only the first token: 2, truncated to 1.5
    weights, _ = importance_weights(old, behaviour, torch.tensor([[1, 0, 0]]), "seq_tis", clip=1.5)
    assert weights.item() == pytest.approx(1.5)
    weights, stats = importance_weights(old, behaviour, mask, "none", clip=1.5)
    assert (weights == 1).all() and stats["is_weight_max"] == pytest.approx(2.0)  # still reported


def test_layer_choice():
    for num_layers in (4, 12, 30):
        for ratio in (0.125, 0.25, 0.5):
            layers = random_layers(num_layers, ratio, random.Random(3))
            assert len(layers) == min(round(ratio * num_layers), num_layers - 2)
            assert 0 not in layers and num_layers - 1 not in layers
    assert random_layers(12, 0.25, random.Random(1)) == random_layers(12, 0.25, random.Random(1))
    assert random_layers(30, 0.25, random.Random(1)) != random_layers(30, 0.25, random.Random(2))


@pytest.mark.parametrize("correction", ["none", "token_tis", "seq_tis"])
def test_training_with_each_correction(four_layers, tmp_path, correction):
    trainer = trainer_for(four_layers, tmp_path, rollout="nested", rollout_correction=correction)
    trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert log["rollout/skipped_layers"] == 1.0  # round(0.25 · 4)
    assert log["rollout/is_weight_min"] <= log["rollout/is_weight_mean"] <= log["rollout/is_weight_max"]
    assert math.isfinite(log["loss"])


def test_bad_options_and_vllm_are_refused(four_layers, tmp_path):
    with pytest.raises(PluginError, match="skip_ratio must be in"):
        load_component("rollout", "nested", skip_ratio=1.0)
    with pytest.raises(UnknownComponentError, match="unknown rollout_correction 'tis'"):  # the option moved
        trainer_for(four_layers, tmp_path, rollout="nested", rollout_correction="tis")
    nested = load_component("rollout", "nested")
    with pytest.raises(ValueError, match="with use_vllm=True vLLM generates from its own copy of the weights"):
        nested.validate(SimpleNamespace(use_vllm=True))
    with pytest.raises(ValueError, match="layer 3 cannot be skipped"):
        trainer_for(four_layers, tmp_path, rollout="nested", rollout_kwargs={"layers": [3]})


def test_behaviour_kl_and_effective_sample_size_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.4], [0.3, 0.3]]))
    behaviour = torch.log(torch.tensor([[0.25, 0.4], [0.3, 0.3]]))
    stats = sampling_quality(old, behaviour, torch.ones(2, 2))
    # sequence weights Π π_old/π_b = 2 and 1: ESS/N = (2 + 1)² / (2 · (4 + 1)) = 0.9; KL = −mean(log ratio) = −log 2 / 4
    assert stats["ess"] == pytest.approx(0.9) and stats["behaviour_kl"] == pytest.approx(-math.log(2) / 4)


def test_block_and_candidate_layers():
    assert late_block(30, 2 / 30) == [26, 27] and late_block(30, 4 / 30) == [24, 25, 26, 27]
    assert late_block(4, 0.25) == [1]
    assert blocks(6, 2) == [[1, 2], [2, 3], [3, 4]]


@pytest.mark.parametrize("identity", [1, 2])
def test_calibration_skips_the_layer_that_changes_the_model_least(identity, four_layers, tmp_path):
    """A layer whose residual branches output zero is the identity: skipping it changes nothing, and calibration
    must find it (with a budget of one layer, skip_ratio 0.25 of 4)."""
    trainer = trainer_for(four_layers, tmp_path, rollout="nested", rollout_kwargs={"selection": "calibrated"})
    layer = trainer.model.model.layers[identity]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    strategy = trainer.rollout_strategy
    prompts = [DATA[i]["prompt"] for i in range(4)]
    assert strategy.choose(trainer.model, prompts, trainer) == [identity]
    assert strategy.calibration_kl["chosen"] == pytest.approx(0.0, abs=1e-6)
    other = 3 - identity  # layers 1 and 2 are the candidates
    assert strategy.calibration_kl["best_block"] == pytest.approx(0.0, abs=1e-6)  # blocks of one = single layers
    state = strategy.state_dict()
    assert state["calibrated"] == [identity] and other not in state["calibrated"]


def test_nested_logs_behaviour_kl_and_ess_and_warns_once(four_layers, tmp_path):
    trainer = trainer_for(
        four_layers, tmp_path, rollout="nested", rollout_kwargs={"selection": "calibrated", "ess_warning": 1.01}
    )
    with pytest.warns(UserWarning, match="effective sample size") as caught:
        trainer.train()
    messages = [str(w.message) for w in caught if "effective sample size" in str(w.message)]
    assert len(messages) == 1
    assert "selection='calibrated'" not in messages[0]  # it is calibrated already: the advice is the budget
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert 0.0 < log["rollout/ess"] <= 1.0 and math.isfinite(log["rollout/behaviour_kl"])
    assert log["rollout/calibration_kl"] == pytest.approx(trainer.rollout_strategy.calibration_kl["chosen"])


def test_nested_is_corrected_by_the_rollout_correction_kind(four_layers, tmp_path):
    """Unset, an off-policy rollout gets token_tis with C = 2 (nested's former default); the weights in the batch
    are that component's on the batch's own log-probs."""
    trainer = trainer_for(four_layers, tmp_path, rollout="nested", rollout_kwargs={"layers": [1]})
    assert trainer.correction_name == "token_tis" and trainer.rollout_correction.clip == 2.0
    trainer.model.train()
    out = trainer._generate_and_score_completions([dict(DATA[i]) for i in range(2) for _ in range(4)])
    old, behaviour = out["old_per_token_logps"], out["sampling_per_token_logps"]
    expected = trainer.rollout_correction(old, behaviour, out["completion_mask"])
    torch.testing.assert_close(out["importance_sampling_ratio"], expected.weights)
    assert not torch.allclose(old, behaviour)  # a layer is skipped: there is something to correct
