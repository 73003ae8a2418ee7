"""What every recipe script does (``recipes/<method>.py`` is three lines): parse ``RecipeArguments`` + the method's
config with ``TrlParser`` (YAML via ``--config``, CLI overrides, ``--preset cpu-demo`` for the sibling demo YAML),
build the task's rows with a named prompt template, measure held-out greedy accuracy, train with the behaviour
monitor, measure again, and write ``summary.json`` and ``training.png`` into ``output_dir``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .plugins import ZRLPluginManager

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
METHODS = {  # method → trainer family
    "simplerl_zoo": "grpo",
    "dr_grpo": "grpo",
    "lite_ppo": "grpo",
    "ppo_max": "ppo",
    "nested_reft": "grpo",
}
GENERATED_TASKS = ("addition", "word_problems", "countdown")


@dataclass
class RecipeArguments:
    """Model and data of a recipe run (the training options are the method's config)."""

    model_name_or_path: str = field(
        default="smollm2",
        metadata={"help": "Local path or hub id; `smollm2` = the embedded SmolLM2-135M-Instruct; `tiny` = a tiny "
                  "random Llama built offline (smoke tests)."},
    )  # fmt: skip
    task: str = field(
        default="addition",
        metadata={"help": "`addition`, `word_problems`, `countdown` (generated, seeded), or GSM8K/MATH-style records: "
                  "a local .json/.jsonl/.parquet file or `hub_name[:config]`."},
    )  # fmt: skip
    task_difficulty: int = field(
        default=2, metadata={"help": "Steps of a word problem / numbers of a Countdown problem."}
    )
    tier: str | None = field(
        default=None, metadata={"help": "Difficulty tier of MATH-style records: easy, medium or hard (SPEC §6)."}
    )
    template: str = field(default="plain", metadata={"help": "Prompt template by name (`zrl plugins` lists them)."})
    template_kwargs: str | None = field(
        default=None, metadata={"help": 'Keyword arguments of the template (JSON), e.g. {"chat": false}.'}
    )
    n_train: int = field(default=2000, metadata={"help": "Training problems (at most)."})
    n_eval: int = field(
        default=200, metadata={"help": "Held-out problems for greedy accuracy before/after (0 = skip)."}
    )
    eval_max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Generation budget of the before/after evaluation (default: max_completion_length)."},
    )
    preset: str | None = field(
        default=None, metadata={"help": "`cpu-demo`: load recipes/<method>_cpu_demo.yaml (before --config / CLI)."}
    )


def expand_preset(method: str, argv: Sequence[str]) -> list[str]:
    """``--preset cpu-demo`` → ``--config recipes/<method>_cpu_demo.yaml`` (an explicit --config wins)."""
    argv = list(argv)
    if "--preset" not in argv:
        return argv
    i = argv.index("--preset")
    preset = argv[i + 1] if i + 1 < len(argv) else ""
    path = RECIPES_DIR / f"{method}_{preset.replace('-', '_')}.yaml"
    if not path.exists():
        presets = sorted(p.stem.removeprefix(f"{method}_") for p in RECIPES_DIR.glob(f"{method}_*.yaml"))
        raise ConfigError(f"no preset {preset!r} for {method}; presets: {presets}")
    del argv[i : i + 2]
    return argv if "--config" in argv else ["--config", str(path), *argv]


def task_rows(recipe: RecipeArguments, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, held-out) rows with ``question`` and ``answer`` (+ task columns); held-out rows never train."""
    from . import tasks

    n = recipe.n_train + recipe.n_eval
    if recipe.task == "addition":
        rows = tasks.addition_problems()
    elif recipe.task == "word_problems":
        rows = tasks.word_problems(n, steps=recipe.task_difficulty, seed=seed)
    elif recipe.task == "countdown":
        rows = tasks.countdown(n, numbers=recipe.task_difficulty, seed=seed)
    else:
        from .loaders import load_math_records

        rows = load_math_records(recipe.task, tier=recipe.tier, limit=n)
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    if recipe.n_eval >= len(rows):
        raise ConfigError(f"n_eval={recipe.n_eval} leaves no training problem out of {len(rows)}")
    return rows[recipe.n_eval : recipe.n_eval + recipe.n_train], rows[: recipe.n_eval]


def default_verifiers(recipe: RecipeArguments, answer_format: str, installed: list[str]) -> tuple[list[str], dict]:
    """The verifier a task needs when the config names none."""
    if recipe.task == "countdown":
        return ["countdown"], {}
    if recipe.task in GENERATED_TASKS or "math_correct" not in installed:
        return ["last_number"], {}
    return ["math_correct"], {
        "math_correct": {"answer_from": answer_format if answer_format != "last_number" else "auto"}
    }


def trainer_family(method: str) -> tuple[type, type]:
    """(config class, trainer class) of a recipe method."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; methods: {sorted(METHODS)}")
    if METHODS[method] == "ppo":
        from .ppo_config import ZRLPPOConfig
        from .ppo_trainer import ZRLPPOTrainer

        return ZRLPPOConfig, ZRLPPOTrainer
    from .config import ZRLConfig
    from .trainer import ZRLGRPOTrainer

    return ZRLConfig, ZRLGRPOTrainer


@dataclass
class PreparedRun:
    """A parsed recipe run, ready to train: arguments, plugins (with the behaviour monitor), rows, model path and the
    verifier the held-out evaluation uses."""

    method: str
    recipe: RecipeArguments
    config: Any
    extra: tuple[Any, ...]
    plugins: ZRLPluginManager
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    model_path: str
    verifier: Any
    trainer_class: type

    @property
    def eval_budget(self) -> int:
        return self.recipe.eval_max_new_tokens or self.config.max_completion_length

    def load_model(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return AutoModelForCausalLM.from_pretrained(self.model_path), AutoTokenizer.from_pretrained(self.model_path)

    def held_out_accuracy(self, model: Any, tokenizer: Any) -> tuple[float, list[str]]:
        """Greedy accuracy on the held-out rows, on the device training uses (call on the main process only)."""
        from accelerate import PartialState

        from .evaluation import greedy_accuracy

        model.to("cpu" if self.config.use_cpu else PartialState().device)
        return greedy_accuracy(model, tokenizer, self.eval_rows, self.verifier, max_new_tokens=self.eval_budget)

    def trainer(self, model: Any, tokenizer: Any, observers: Sequence[Any] = ()) -> Any:
        """The method's trainer on the training rows (plus held-out rows when the config evaluates during training);
        ``observers`` are registered as plugins of this run."""
        from datasets import Dataset

        for observer in observers:
            self.plugins.register_plugin(observer, name=f"{type(observer).__name__}-{id(observer)}")
        evaluating = self.config.eval_strategy != "no" and self.eval_rows
        return self.trainer_class(model, args=self.config, train_dataset=Dataset.from_list(self.train_rows),
                                  eval_dataset=Dataset.from_list(self.eval_rows) if evaluating else None,
                                  processing_class=tokenizer, plugin_manager=self.plugins)  # fmt: skip


def prepare(
    method: str, argv: Sequence[str], extra_dataclasses: Sequence[type] = (), model_workdir: str | None = None
) -> PreparedRun:
    """Parse ``argv`` (``RecipeArguments``, the method's config, then ``extra_dataclasses``), pick the template and
    verifiers, build the task's rows and resolve the model (random test models are built under ``model_workdir``,
    default the run's ``output_dir``)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from .config import parse_config
    from .models import resolve_model
    from .monitor import BehaviourMonitor
    from .plugins import ZRLPluginManager
    from .tasks import with_prompts

    config_class, trainer_class = trainer_family(method)
    dataclass_types = (RecipeArguments, config_class, *extra_dataclasses)
    recipe, config, *extra = parse_config(dataclass_types, expand_preset(method, argv))
    plugins = ZRLPluginManager()
    plugins.register_plugin(BehaviourMonitor(), name="behaviour-monitor")
    template_kwargs = json.loads(recipe.template_kwargs) if recipe.template_kwargs else {}
    if recipe.model_name_or_path == "tiny":
        template_kwargs.setdefault("chat", False)  # the tiny tokenizer has no chat template
    template = plugins.load_component("template", recipe.template, **template_kwargs)
    if not config.verifiers:
        config.verifiers, config.verifier_kwargs = default_verifiers(
            recipe, template.answer_format, plugins.names("verifier")
        )
    selected = {"verifier": config.verifiers, "normalizer": [config.normalizer], "kl_penalty": [config.kl_penalty],
                "rollout": [config.rollout]}  # fmt: skip
    for kind, names in selected.items():  # an unknown name fails now, with the installed list, not after loading
        for name in names:
            plugins.entry(kind, name)
    train_rows, eval_rows = task_rows(recipe, config.seed)
    verifier = plugins.load_component(
        "verifier", config.verifiers[0], **config.verifier_kwargs.get(config.verifiers[0], {})
    )
    return PreparedRun(
        method=method, recipe=recipe, config=config, extra=tuple(extra), plugins=plugins,
        train_rows=with_prompts(train_rows, template), eval_rows=with_prompts(eval_rows, template),
        model_path=resolve_model(recipe.model_name_or_path, model_workdir or config.output_dir), verifier=verifier,
        trainer_class=trainer_class,
    )  # fmt: skip


def run(method: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse, train and report one recipe run; returns the summary written to ``summary.json``."""
    from accelerate import PartialState

    from .plots import plot_training

    started = time.time()
    prepared = prepare(method, sys.argv[1:] if argv is None else argv)
    recipe, config = prepared.recipe, prepared.config
    model, tokenizer = prepared.load_model()
    state = PartialState()
    before = None
    if recipe.n_eval and state.is_main_process:
        before, _ = prepared.held_out_accuracy(model, tokenizer)
        print(f"[{method}] held-out greedy accuracy before: {before:.3f} ({len(prepared.eval_rows)} problems)",
              flush=True)  # fmt: skip

    trainer = prepared.trainer(model, tokenizer)
    train_started = time.time()
    trainer.train()
    train_seconds = time.time() - train_started

    summary: dict[str, Any] = {"method": method, "model": recipe.model_name_or_path, "task": recipe.task,
                               "template": recipe.template, "verifiers": config.verifiers,
                               "normalizer": config.normalizer, "kl_penalty": config.kl_penalty,
                               "rollout": config.rollout, "max_steps": config.max_steps}  # fmt: skip
    if state.is_main_process:
        if recipe.n_eval:
            after, completions = prepared.held_out_accuracy(trainer.model, tokenizer)
            summary.update(held_out=len(prepared.eval_rows), accuracy_before=before, accuracy_after=after,
                           sample_completions=completions[:5])  # fmt: skip
            print(f"[{method}] held-out greedy accuracy after:  {after:.3f}", flush=True)
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        summary["seconds"] = round(time.time() - started, 1)
        summary["train_seconds"] = round(train_seconds, 1)
        summary["log_history"] = trainer.state.log_history
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        plot_training(trainer.state.log_history, out / "training.png", title=f"{method} on {recipe.task}")
        print(f"[{method}] wrote {out / 'summary.json'} and {out / 'training.png'}", flush=True)
    return summary


def main(method: str) -> None:
    """Entry point of ``recipes/<method>.py``."""
    from .distributed import shutdown_distributed

    run(method)
    shutdown_distributed()
