"""Errors before compute (kwarg types, training data), messages that stay readable, and entry points that work after
``pip install zrl-plugins`` alone (no matplotlib, no gguf)."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import tiny_config
from zrl_plugins import ZRLGRPOTrainer, load_component
from zrl_plugins.framework.errors import DataError
from zrl_plugins.framework.kwarg_types import ComponentArgumentError
from zrl_plugins.framework.log_limits import shorten
from zrl_plugins.framework.plugins import ZRLPluginManager

REPO = Path(__file__).resolve().parents[1]
MISSING_MODEL = "/nonexistent/model"  # loading it would fail: an error about it means the check came too late
TINY_RECIPE = [
    "--preset",
    "cpu-demo",
    "--model_name_or_path",
    "tiny",
    "--max_steps",
    "1",
    "--n_eval",
    "0",
    "--n_train",
    "8",
    "--per_device_train_batch_size",
    "4",
    "--num_generations",
    "4",
    "--max_completion_length",
    "4",
]


# ---------------------------------------------------------------------------------------------------- kwarg types
@pytest.mark.parametrize(
    "field, kwargs, message",
    [
        ("normalizer_kwargs", {"delta": "x"}, "normalizer 'grpo' .* keyword argument 'delta' must be float, got str"),
        ("policy_loss_kwargs", {"epsilon_low": "0.2"}, "policy_loss 'clip' .* 'epsilon_low' must be float, got str"),
        (
            "verifier_kwargs",
            {"math_correct": {"timeout": "x"}},
            "verifier 'math_correct' .* 'timeout' must be float, got str 'x'",
        ),
        (
            "verifier_kwargs",
            {"math_correct": {"num_workers": 1.5}},
            "'num_workers' must be int \\| None, got float 1.5",
        ),
    ],
)
def test_wrong_kwarg_types_fail_when_the_trainer_is_built(tmp_path, field, kwargs, message):
    extra = {"verifiers": ["math_correct"]} if field == "verifier_kwargs" else {"verifiers": ["last_number"]}
    config = tiny_config(tmp_path, normalizer="grpo", policy_loss="clip", **extra, **{field: kwargs})
    started = time.perf_counter()
    with pytest.raises(ComponentArgumentError, match=message):
        ZRLGRPOTrainer(MISSING_MODEL, args=config)
    assert time.perf_counter() - started < 1.3


def test_kwarg_types_that_match_pass():
    assert load_component("normalizer", "grpo", delta=1) is not None  # an int where a float is expected
    verifier = load_component("verifier", "math_correct", timeout=2, num_workers=None, extraction="boxed")
    assert verifier.grader.timeout == 2.0
    with pytest.raises(ComponentArgumentError, match="'extraction' must be Literal"):
        load_component("verifier", "math_correct", extraction=3)
    with pytest.raises(ComponentArgumentError, match=r"'aggregation' must be str \| None, got int 1"):
        load_component("normalizer", "grpo", aggregation=1)


def test_kwarg_types_from_the_factory_annotations_of_a_plugin():
    from zrl_plugins import hookimpl

    class Factory:
        def __init__(
            self,
            weights: list[float],
            names: tuple[str, ...] = (),
            table: dict[str, int] | None = None,
            strict: bool = False,
            anything=None,
        ):
            self.weights = weights

        def __call__(self, prompts, completions, **columns):
            return [0.0] * len(completions)

    class Plugin:
        @hookimpl
        def zrl_register_verifiers(self, register):
            register("typed", Factory)

    pm = ZRLPluginManager(load_entrypoints=False)
    pm.register_plugin(Plugin(), name="typed-plugin")
    assert pm.load_component("verifier", "typed", weights=[1, 0.5], names=["a"], table={"x": 1}, anything="?")
    with pytest.raises(ComponentArgumentError, match=r"'weights' must be list\[float\], got list \[1, 'a'\]"):
        pm.load_component("verifier", "typed", weights=[1, "a"])
    with pytest.raises(ComponentArgumentError, match=r"'table' must be dict\[str, int\] \| None, got dict"):
        pm.load_component("verifier", "typed", weights=[], table={"x": "1"})
    with pytest.raises(ComponentArgumentError, match="'strict' must be bool, got int 1"):
        pm.load_component("verifier", "typed", weights=[], strict=1)


# ---------------------------------------------------------------------------------------------------- data
def _data(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([], "train_dataset is empty"),
        ([{"question": "1+1?", "answer": "2"}] * 4, "train_dataset has no 'prompt' column .*'answer', 'question'"),
        (
            [{"prompt": "1+1?", "solution": "2"}] * 4,
            r"verifier 'last_number' needs the data set column\(s\) \['answer'\]",
        ),
        (
            [{"prompt": "1+1?", "answer": "2"}] * 3 + [{"prompt": None, "answer": "2"}],
            "row 3 of train_dataset: column 'prompt' is neither a string nor a list of messages",
        ),
        (
            [
                {"prompt": [{"role": "user", "content": "1+1?"}], "answer": "2"},
                {"prompt": [{"text": "1+1?"}], "answer": "2"},
            ],
            "row 1 of train_dataset: column 'prompt' has a message 0 without a 'role' and 'content'",
        ),
    ],
)
def test_bad_training_data_fails_before_the_model_loads(tmp_path, rows, message):
    config = tiny_config(tmp_path, verifiers=["last_number"])
    data = _data(rows) if rows else _data([]).add_column("prompt", []).add_column("answer", [])
    with pytest.raises(DataError, match=message):
        ZRLGRPOTrainer(MISSING_MODEL, args=config, train_dataset=data)


def test_a_recipe_with_no_training_rows_fails_before_the_model_is_built(tmp_path):
    from zrl_plugins.apps.recipe import prepare

    with pytest.raises(DataError, match="train_dataset is empty"):
        prepare("dr_grpo", [*TINY_RECIPE, "--n_train", "0", "--output_dir", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # the random test model was not built either


# ---------------------------------------------------------------------------------------------------- messages
def test_an_unknown_method_gets_a_suggestion(capsys):
    from zrl_plugins.apps.cli import main

    assert main(["train", "dr_grop"]) == 2
    assert "Did you mean 'dr_grpo'?" in capsys.readouterr().err


def test_a_one_megabyte_gold_answer_is_not_logged_whole(caplog):
    verifier = load_component("verifier", "math_correct", num_workers=0)
    verifier.grader.grade_many = lambda items: ["unparsable_gold"] * len(items)  # math-verify takes seconds on 1 MB
    gold = "\\frac{" * 170_000
    with caplog.at_level(logging.WARNING, logger="zrl_math.verifiers"):
        assert verifier(prompts=[""], completions=["\\boxed{1}"], answer=[gold]) == [None]
    (message,) = [r.getMessage() for r in caplog.records if "cannot be parsed" in r.getMessage()]
    assert len(message) < 1000 and "characters cut]" in message


def test_trl_warnings_quoting_whole_rows_are_shortened(tmp_path, tiny_model_path, arithmetic_dataset, caplog):
    config = tiny_config(tmp_path, verifiers=["last_number"])
    ZRLGRPOTrainer(tiny_model_path, args=config, train_dataset=arithmetic_dataset)
    with caplog.at_level(logging.WARNING, logger="trl.trainer.grpo_trainer"):
        logging.getLogger("trl.trainer.grpo_trainer").warning("All reward functions returned None: %s", "x" * 10**6)
    (message,) = [r.getMessage() for r in caplog.records]
    assert len(message) < 5000 and message.startswith("All reward functions returned None")


def test_shorten():
    assert shorten("abc", 10) == "abc"
    assert shorten("a" * 10 + "b" * 10, 10) == "aaaaa…[10 characters cut]…bbbbb"


# ---------------------------------------------------------------------------------------------------- packaging
def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRL_EXPERIMENTAL_SILENCE="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_a_recipe_without_matplotlib_skips_the_plot_and_exits_0(tmp_path):
    out = tmp_path / "run"
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # as after `pip install zrl-plugins` alone
        "from zrl_plugins.apps.recipe import main\n"
        f"main('dr_grpo', {[*TINY_RECIPE, '--output_dir', str(out)]!r})"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "summary.json").exists() and not (out / "training.png").exists()
    skipped = [line for line in result.stderr.splitlines() if "matplotlib is not installed" in line]
    assert skipped == [
        f"matplotlib is not installed (pip install 'zrl-plugins[demo]'): {out / 'training.png'} not written"
    ]


def test_the_ablation_plot_without_matplotlib(monkeypatch, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("ablate_recipe", REPO / "recipes" / "ablate.py")
    ablate = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, ablate)  # dataclasses look their module up while the class is built
    spec.loader.exec_module(ablate)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert ablate.plot({}, "seed", tmp_path / "ablation.png", 1) is False
    assert "pip install 'zrl-plugins[demo]'" in capsys.readouterr().err
    assert not (tmp_path / "ablation.png").exists()


@pytest.mark.parametrize("missing", ["gguf", "matplotlib"])
def test_the_demo_without_its_extra_stops_before_any_work(tmp_path, missing):
    code = (
        f"import sys; sys.modules[{missing!r}] = None\n"
        f"from zrl_plugins.apps.demo import main\n"
        f"main(['--output_dir', {str(tmp_path / 'demo')!r}])"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"the demo needs {missing}, from the demo extra: pip install 'zrl-plugins[demo]'"
    )
    assert "device:" not in result.stdout and not (tmp_path / "demo").exists()
