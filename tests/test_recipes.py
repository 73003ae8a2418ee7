"""Recipes, data (templates, generated tasks, loaders), evaluation and the behaviour monitor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY_RECIPE_FLAGS
from zrl_plugins.framework.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("simplerl_zoo", "dr_grpo", "lite_ppo", "ppo_max", "nested_reft")
TINY_OVERRIDES = ["--model_name_or_path", "tiny", *TINY_RECIPE_FLAGS]


# ---------------------------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("method", RECIPES)
def test_each_recipe_runs_two_steps_with_its_cpu_demo_preset(method, tmp_path):
    from zrl_plugins.apps.recipe import run

    summary = run(method, ["--preset", "cpu-demo", *TINY_OVERRIDES, "--output_dir", str(tmp_path)])
    steps = [h for h in summary["log_history"] if "loss" in h]
    assert len(steps) == 2
    assert summary["accuracy_before"] is not None and summary["accuracy_after"] is not None
    assert (tmp_path / "training.png").stat().st_size > 10_000
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["method"] == method
    # provenance: what it takes to reproduce the run
    assert {"trl", "transformers", "torch", "zrl-plugins"} <= written["versions"].keys()
    assert written["device"] and written["seed"] == written["config"]["seed"]
    assert written["config"]["max_steps"] == 2 and "dtype" in written and "bf16_autocast" in written
    assert "behaviour/verification" in steps[0] and "accuracy" in steps[0]
    expected = {"dr_grpo": "dr_grpo", "lite_ppo": "lite_ppo", "ppo_max": "gae"}.get(method, "grpo")
    assert written["normalizer"] == expected
    if method == "ppo_max":
        assert "critic/value_loss" in steps[0]
    if method == "nested_reft":
        assert "rollout/is_weight_mean" in steps[0]


def test_recipe_help_lists_trl_model_flags():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "simplerl_zoo.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for flag in (
        "--dtype",
        "--attn_implementation",
        "--use_peft",
        "--lora_r",
        "--lora_target_modules",
        "--load_in_4bit",
        "--trust_remote_code",
        "--model_name_or_path",
    ):
        assert flag in result.stdout, flag


def test_lora_from_a_recipe_trains_adapters_only(tmp_path):
    import torch
    from safetensors.torch import load_file

    from zrl_plugins import hookimpl
    from zrl_plugins.apps.recipe import run

    class DigitsPlugin:  # a reward the random model earns unevenly, so the adapters get a gradient
        @hookimpl
        def zrl_register_verifiers(self, register):
            register(
                "digits", lambda: lambda prompts, completions, **kw: [sum(map(str.isdigit, c)) for c in completions]
            )

    flags = [
        "--n_eval",
        "0",
        "--verifiers",
        "digits",
        "--learning_rate",
        "1e-2",
        "--use_peft",
        "--lora_r",
        "4",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
    ]
    summary = run(
        "simplerl_zoo",
        ["--preset", "cpu-demo", *TINY_OVERRIDES, *flags, "--output_dir", str(tmp_path)],
        plugins=[DigitsPlugin()],
    )
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["use_peft"] and written["dtype"] == "float32"  # `auto` on a CPU
    trainable, total = written["trainable_parameters"], written["total_parameters"]
    # 2 layers x (q_proj + v_proj) x r=4 x (32 in + 32 out) adapter weights, the base frozen
    assert trainable == 2 * 2 * 4 * (32 + 32) and total > 20 * trainable
    adapter = load_file(tmp_path / "checkpoint-2" / "adapter_model.safetensors")
    assert adapter and all("lora_" in key for key in adapter)  # the checkpoint holds the adapters, nothing else
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it was trained
    assert torch.isfinite(torch.tensor([h["loss"] for h in summary["log_history"] if "loss" in h])).all()


def test_model_flags_resolve_and_refuse_before_loading(monkeypatch):
    import types

    from zrl_plugins.apps.model_loading import (
        RecipeModelConfig,
        check_model_flags,
        keeps_fp32_master_weights,
        resolve_dtype,
    )

    cpu = types.SimpleNamespace(use_cpu=True, bf16=False, fp16=False, deepspeed_plugin=None, fsdp=None)
    gpu = types.SimpleNamespace(use_cpu=False, bf16=True, fp16=False, deepspeed_plugin=None, fsdp=None)
    assert resolve_dtype("auto", cpu) == "float32" and resolve_dtype("bfloat16", cpu) == "bfloat16"
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *a, **k: True)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert not keeps_fp32_master_weights(gpu) and resolve_dtype("auto", gpu) == "float32"  # DDP: no master weights
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert resolve_dtype("auto", gpu) == "bfloat16"  # DeepSpeed keeps fp32 master weights
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert resolve_dtype("auto", gpu) == "bfloat16"  # so does FSDP2 under mixed precision
    with pytest.raises(ConfigError, match="dtype must be one of"):
        resolve_dtype("fp8", gpu)
    with pytest.raises(ConfigError, match="add --use_peft"):
        check_model_flags(RecipeModelConfig(load_in_4bit=True), cpu)
    with pytest.raises(ConfigError, match="sdpa"):
        check_model_flags(RecipeModelConfig(attn_implementation="flash_attention_2"), cpu)


def test_one_flag_ablation_and_unknown_preset(tmp_path):
    from zrl_plugins.apps.recipe import expand_preset, run

    summary = run(
        "simplerl_zoo",
        [
            "--preset",
            "cpu-demo",
            *TINY_OVERRIDES,
            "--max_steps",
            "1",
            "--n_eval",
            "0",
            "--normalizer",
            "dr_grpo",
            "--output_dir",
            str(tmp_path),
        ],
    )
    assert summary["normalizer"] == "dr_grpo"
    with pytest.raises(ConfigError, match="presets: \\['cpu_demo'\\]"):
        expand_preset("dr_grpo", ["--preset", "gpu-huge"])
    with pytest.raises(ConfigError, match="--preset cpu-demo and --config both name a config file"):
        expand_preset("dr_grpo", ["--preset", "cpu-demo", "--config", "x.yaml"])  # was: the preset silently dropped


@pytest.mark.parametrize("method", RECIPES)
def test_paper_configs_parse_into_the_method_config(method):
    from zrl_plugins.apps.recipe import METHODS, RecipeArguments
    from zrl_plugins.trainers.config import parse_config

    if METHODS[method] == "ppo":
        from zrl_plugins.trainers.ppo_config import ZRLPPOConfig as Config
    else:
        from zrl_plugins.trainers.config import ZRLConfig as Config
    from zrl_plugins.apps.model_loading import RecipeModelConfig

    paper = str(ROOT / "recipes" / f"{method}.yaml")
    recipe, config, model = parse_config(
        (RecipeArguments, Config, RecipeModelConfig),
        ["--config", paper, "--bf16", "false"],  # no GPU here
    )
    assert (model.dtype, model.attn_implementation) == ("bfloat16", "flash_attention_2")  # 7B-scale GPU settings
    assert config.num_generations >= 2 and config.verifiers == ["math_correct"]
    assert recipe.template in ("qwen_math", "simple")
    if method == "simplerl_zoo":
        assert (config.beta, config.learning_rate, config.entropy_coef, config.kl_penalty) == (1e-4, 5e-7, 1e-3, "k3")


@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_are_valid(path):
    from accelerate.commands.config.config_args import load_config_from_file

    data = yaml.safe_load(path.read_text())
    config = load_config_from_file(str(path))  # accelerate's own loader: unknown keys raise
    assert config.num_processes >= 1
    if config.distributed_type == "DEEPSPEED":
        assert data["deepspeed_config"]["zero_stage"] in (2, 3)
    if config.distributed_type == "FSDP":
        assert data["fsdp_config"]["fsdp_version"] == 2


def test_every_config_file_named_in_a_recipe_exists():
    named = set()
    for text in [p.read_text() for p in (ROOT / "recipes").glob("*.py")] + [
        p.read_text() for p in (ROOT / "recipes").glob("*.yaml")
    ]:
        named |= {word for word in text.split() if word.startswith("recipes/") and word.endswith((".yaml", ".py"))}
    assert named
    missing = [name for name in named if not (ROOT / name).exists()]
    assert not missing, missing


# ---------------------------------------------------------------------------------------------------- templates
def test_templates_render():
    from zrl_plugins import load_component

    simple = load_component("template", "simple")
    assert simple("What is 2+2?") == "Question:\nWhat is 2+2?\nAnswer:\nLet's think step by step.\n"
    boxed = load_component("template", "chat_boxed")
    assert boxed("Q") == [
        {"role": "user", "content": "Q\nPlease reason step by step, and put your final answer within \\boxed{}."}
    ]
    qwen = load_component("template", "qwen_math")("Q")
    assert qwen[0]["role"] == "system" and "\\boxed{}" in qwen[0]["content"] and qwen[1]["content"] == "Q"
    r1 = load_component("template", "r1_think")("Q")
    assert r1.endswith("User: Q\nAssistant: <think>") and "\\boxed{}" in r1
    assert load_component("template", "plain", chat=False, suffix="Just the number.")("Q") == "Q Just the number."
    assert boxed.answer_format == "boxed"


# ---------------------------------------------------------------------------------------------------- tasks
def test_generated_tasks_are_deterministic_and_verify_with_math_correct():
    from zrl_plugins import load_component
    from zrl_plugins.apps.tasks import countdown, word_problems

    assert word_problems(20, steps=3, seed=1) == word_problems(20, steps=3, seed=1)
    assert word_problems(20, steps=3, seed=1) != word_problems(20, steps=3, seed=2)
    problem = word_problems(1, steps=1, seed=0)[0]
    assert problem["question"].count(".") >= 2 and int(problem["answer"]) >= 0

    rows = word_problems(10, steps=4, seed=0)
    math_correct = load_component("verifier", "math_correct", num_workers=0)
    completions = [f"So the answer is \\boxed{{{r['answer']}}}." for r in rows]
    assert math_correct(prompts=[""] * 10, completions=completions, answer=[r["answer"] for r in rows]) == [1.0] * 10
    wrong = [f"\\boxed{{{int(r['answer']) + 1}}}" for r in rows]
    assert math_correct(prompts=[""] * 10, completions=wrong, answer=[r["answer"] for r in rows]) == [0.0] * 10

    games = countdown(10, numbers=3, seed=0)
    assert games == countdown(10, numbers=3, seed=0)
    verifier = load_component("verifier", "countdown")
    solutions = [f"<answer>{g['solution']}</answer>" for g in games]
    columns = {"numbers": [g["numbers"] for g in games], "target": [g["target"] for g in games]}
    assert verifier(prompts=[""] * 10, completions=solutions, **columns) == [1.0] * 10
    assert (
        math_correct(
            prompts=[""] * 10,
            completions=[f"\\boxed{{{g['answer']}}}" for g in games],
            answer=[g["answer"] for g in games],
        )
        == [1.0] * 10
    )


def test_countdown_verifier_rules():
    from zrl_plugins.builtins.verifiers import CountdownVerifier

    score = CountdownVerifier().score
    assert score("(3 + 5) * 2 = 16", [2, 3, 5], 16) == 1.0
    assert score("3 * 5 + 1 = 16", [2, 3, 5], 16) == 0.0  # uses 1, not 2
    assert score("(3 + 5) * 2 * 2 = 32", [2, 3, 5], 32) == 0.0  # 2 used twice
    assert score("import os", [2, 3, 5], 16) == 0.0
    assert score("no equation here", [2, 3, 5], 16) == 0.0
    assert score("5 / 0 + 3 + 2", [2, 3, 5], 16) == 0.0


# ---------------------------------------------------------------------------------------------------- loaders
def test_loaders_on_local_files(tmp_path):
    import pandas as pd

    from zrl_plugins.apps.loaders import load_math_records

    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": f"work...\n#### {i},000"}) for i in range(3)))
    rows = load_math_records(str(gsm))
    assert rows[2] == {"question": "q2", "answer": "2000", "level": None}

    math = pd.DataFrame(
        {
            "problem": [f"p{i}" for i in range(1, 6)],
            "solution": [f"so \\boxed{{\\frac{{{i}}}{{2}}}}" for i in range(1, 6)],
            "level": [f"Level {i}" for i in range(1, 6)],
        }
    )
    path = tmp_path / "math.parquet"
    math.to_parquet(path)
    assert load_math_records(str(path))[0]["answer"] == "\\frac{1}{2}"
    assert [r["level"] for r in load_math_records(str(path), tier="hard")] == [3, 4, 5]
    assert [r["level"] for r in load_math_records(str(path), tier="medium")] == [1, 2, 3, 4]
    assert [r["level"] for r in load_math_records(str(path), tier="easy")] == [1]
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([*json.loads(math.to_json(orient="records")), {"problem": "g", "solution": "#### 7"}]))
    assert [r["answer"] for r in load_math_records(str(mixed), tier="easy")] == ["\\frac{1}{2}", "7"]
    with pytest.raises(DataError, match="no column 'missing'"):
        load_math_records(str(path), question_field="missing")
    answers_only = tmp_path / "answers.jsonl"
    answers_only.write_text(json.dumps({"answer": "1"}))
    with pytest.raises(DataError, match="no question column"):
        load_math_records(str(answers_only))
    with pytest.raises(DataError, match="unknown tier"):
        load_math_records(str(path), tier="legendary")


# ---------------------------------------------------------------------------------------------------- evaluation
def test_eval_metrics_on_canned_completions():
    from zrl_plugins import load_component
    from zrl_plugins.apps.evaluation import summarize_scores

    verifier = load_component("verifier", "last_number")
    completions = ["4", "the sum is 7", "I think 10", "..."]
    scores = verifier(prompts=[""] * 4, completions=completions, answer=["4", "7", "9", "1"])
    assert scores == [1.0, 1.0, 0.0, 0.0]
    metrics = summarize_scores(
        scores, [2, 5, 9, 12], [False, False, False, True], sampled_scores=[[0, 1], [1, 1], [0, 1], [0, None]]
    )
    intervals = {key: metrics.pop(key) for key in [k for k in metrics if k.endswith("_95ci")]}
    assert metrics == {
        "n": 4,
        "pass@1": 0.5,
        "mean_length_correct": 3.5,
        "mean_length_incorrect": 10.5,
        "truncation_rate": 0.25,
        "avg@2": (0.5 + 1 + 0.5 + 0) / 4,
        "pass@1_sampled": (0.5 + 1 + 0.5 + 0) / 4,  # pass@1 from 2 samples is their mean accuracy
        "pass@2": 0.75,
    }
    assert sorted(intervals) == ["pass@1_95ci", "pass@1_sampled_95ci", "pass@2_95ci"]
    assert all(low <= metrics[key.removesuffix("_95ci")] <= high for key, (low, high) in intervals.items())


def test_accuracy_counts_correct_answers_whatever_the_reward_shaping(tiny_model_path):
    """Held-out accuracy is the fraction of completions scored >= 1 (correct): a format-aware reward's -0.5 / -1
    penalties must not make it negative, nor partial credit count as a fraction of a correct answer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zrl_plugins.apps.evaluation import greedy_accuracy, is_correct

    assert [is_correct(s) for s in (1.0, 1.5, 0.99, 0.0, -0.5, -1.0, None)] == [True, True] + [False] * 5
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path, padding_side="left")
    rows = [{"prompt": f"{i} plus", "answer": str(i)} for i in range(5)]

    def shaped(prompts, completions, **columns):
        return [1.0, -0.5, -1.0, None, 0.5]

    accuracy, completions = greedy_accuracy(model, tokenizer, rows, shaped, max_new_tokens=2)
    assert accuracy == 0.2 and len(completions) == 5


def test_zrl_eval_command(tmp_path, tiny_model_path, capsys):
    from zrl_plugins.apps.cli import main

    assert (
        main(
            [
                "eval",
                "--model",
                tiny_model_path,
                "--n",
                "5",
                "--k",
                "2",
                "--max_new_tokens",
                "6",
                "--template_kwargs",
                '{"chat": false}',
                "--output",
                str(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["n"] == 5 and 0.0 <= report["pass@1"] <= report["pass@2"] <= 1.0
    assert report["truncation_rate"] <= 1.0 and (report["mean_length_incorrect"] or 0) <= 6
    assert "| pass@1 |" in (tmp_path / "eval.md").read_text()


# ---------------------------------------------------------------------------------------------------- monitor
LABELLED = [
    ("Let me check: 3 + 4 = 7, correct.", {"verification"}),
    ("We can verify by plugging it back into the equation.", {"verification"}),
    ("Wait, that is wrong. Let me recalculate.", {"backtracking"}),
    ("Actually, I made a mistake above.", {"backtracking"}),
    ("First, we need to find the total. Step 2: divide.", {"subgoal_setting"}),
    ("To solve this, we compute the area.", {"subgoal_setting"}),
    ("Case 1: x is even. Case 2: x is odd.", {"enumeration"}),
    ("Let's list all possible values of n.", {"enumeration"}),
    ("The answer is 12.", set()),
    ("3 + 4 = 7", set()),
    (
        "First, let me check the constraint. Wait, that's not right; let's consider all cases.",
        {"subgoal_setting", "verification", "backtracking", "enumeration"},
    ),
]


@pytest.mark.parametrize(("text", "expected"), LABELLED)
def test_behaviour_rules_on_labelled_examples(text, expected):
    from zrl_plugins.apps.monitor import behaviours

    assert {name for name, shown in behaviours(text).items() if shown} == expected


def test_default_verifier_for_math_records_loads(tmp_path):
    """A GSM8K/MATH-style task with no verifier named gets math_correct with the template's extraction."""
    from zrl_plugins.apps.recipe import RecipeArguments, default_verifiers
    from zrl_plugins.framework.plugins import get_plugin_manager

    names, kwargs = default_verifiers(
        RecipeArguments(task=str(tmp_path / "math.jsonl")), "boxed", get_plugin_manager().names("verifier")
    )
    verifier = get_plugin_manager().load_component("verifier", names[0], **kwargs[names[0]])
    assert verifier(prompts=["q"], completions=["so \\boxed{4}"], answer=["4"]) == [1.0]
