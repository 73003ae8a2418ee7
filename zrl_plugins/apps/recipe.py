"""What every recipe script does (``recipes/<method>.py`` calls :func:`main` with its method's name): parse
``RecipeArguments``, the method's config and TRL's ``ModelConfig`` with ``TrlParser`` (YAML via ``--config``, CLI
overrides, ``--preset cpu-demo`` for the sibling demo YAML), build the task's rows with a named prompt template,
load the policy as the model flags say (dtype, attention, LoRA, 4/8-bit), measure held-out greedy accuracy, train
with the behaviour monitor, measure again, and write ``summary.json`` and ``training.png`` into ``output_dir``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..framework.errors import ConfigError

if TYPE_CHECKING:
    from ..framework.plugins import ZRLPluginManager

PACKAGE_DIR = Path(__file__).resolve().parents[1]
SOURCE_RECIPES_DIR = PACKAGE_DIR.parent / "recipes"  # a checkout (and editable installs)
PACKAGED_RECIPES_DIR = PACKAGE_DIR / "recipe_files"  # a wheel (copied there by setup.py)


def recipes_dir() -> Path:
    """Where the recipe YAMLs (and ``accelerate/`` configs) are: inside the installed package, or the checkout."""
    if PACKAGED_RECIPES_DIR.is_dir():
        return PACKAGED_RECIPES_DIR
    if SOURCE_RECIPES_DIR.is_dir():
        return SOURCE_RECIPES_DIR
    raise ConfigError(f"no recipe files found in {PACKAGED_RECIPES_DIR} or {SOURCE_RECIPES_DIR}; reinstall zrl-plugins")


def list_recipes() -> dict[str, dict[str, Any]]:
    """Every method with its trainer family, paper config, presets and their YAML paths."""
    root = recipes_dir()

    def presets(method: str) -> dict[str, str]:
        return {p.stem.removeprefix(f"{method}_").replace("_", "-"): str(p) for p in root.glob(f"{method}_*.yaml")}

    return {
        method: {"trainer": family, "config": str(root / f"{method}.yaml"), "presets": presets(method)}
        for method, family in METHODS.items()
    }


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
    """Data and evaluation of a recipe run (the model is TRL's ``ModelConfig``, the training options the method's
    config)."""

    task: str = field(
        default="addition",
        metadata={
            "help": "`addition`, `word_problems`, `countdown` (generated, seeded), or GSM8K/MATH-style records: "
            "a local .json/.jsonl/.parquet file or `hub_name[:config]`."
        },
    )
    task_difficulty: int = field(
        default=2, metadata={"help": "Steps of a word problem / numbers of a Countdown problem."}
    )
    tier: str | None = field(
        default=None,
        metadata={"help": "Difficulty tier of MATH-style records: easy, medium or hard (docs/methods.md#tasks)."},
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
    eval_every: int | None = field(
        default=None,
        metadata={
            "help": "Also measure held-out greedy accuracy (and `eval_benchmarks`) every this many optimizer steps "
            "during training, logged as eval/held_out/accuracy (eval/<benchmark>/pass@1) and drawn in training.png."
        },
    )
    eval_benchmarks: str | None = field(
        default=None,
        metadata={
            "help": "Math benchmarks measured during training (greedy pass@1, lengths, truncation; avg@k with "
            "`eval_benchmarks_k`; at the start, every `eval_every` steps "
            "and at the end; graded by math_correct): comma-separated names or name=FILE, as in `zrl eval "
            "--benchmarks`. The final values go to summary.json."
        },
    )
    eval_benchmarks_n: int = field(
        default=100, metadata={"help": "Problems of each of `eval_benchmarks` measured (the first ones, fixed)."}
    )
    eval_benchmarks_k: int = field(
        default=0,
        metadata={
            "help": "Samples per problem of `eval_benchmarks` (temperature 1, seeded by the step, the training RNG "
            "untouched): also logs eval/<benchmark>/avg@k and pass@k. 0: greedy pass@1 only."
        },
    )
    split_seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of the train / held-out split of generated tasks (default: the training `seed`); "
            "seeded ablations keep one split for every seed."
        },
    )
    preset: str | None = field(
        default=None,
        metadata={
            "help": "`cpu-demo`: load the method's <method>_cpu_demo.yaml (`zrl recipes` lists them; before "
            "--config / CLI)."
        },
    )


def expand_preset(method: str, argv: Sequence[str]) -> list[str]:
    """``--preset cpu-demo`` → ``--config recipes/<method>_cpu_demo.yaml`` (refused together with ``--config``)."""
    argv = list(argv)
    if "--preset" not in argv:
        return argv
    i = argv.index("--preset")
    preset = argv[i + 1] if i + 1 < len(argv) else ""
    root = recipes_dir()
    path = root / f"{method}_{preset.replace('-', '_')}.yaml"
    if not path.exists():
        presets = sorted(p.stem.removeprefix(f"{method}_") for p in root.glob(f"{method}_*.yaml"))
        raise ConfigError(f"no preset {preset!r} for {method}; presets: {presets}")
    if "--config" in argv:
        raise ConfigError(
            f"--preset {preset} and --config both name a config file (--preset {preset} is --config {path}); pass "
            "one of them and override its keys with flags"
        )
    del argv[i : i + 2]
    return ["--config", str(path), *argv]


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
        "math_correct": {"extraction": answer_format if answer_format != "last_number" else "auto"}
    }


def trainer_family(method: str) -> tuple[type, type]:
    """(config class, trainer class) of a recipe method."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; methods: {sorted(METHODS)}")
    if METHODS[method] == "ppo":
        from ..trainers.ppo import ZRLPPOTrainer
        from ..trainers.ppo_config import ZRLPPOConfig

        return ZRLPPOConfig, ZRLPPOTrainer
    from ..trainers.config import ZRLConfig
    from ..trainers.grpo import ZRLGRPOTrainer

    return ZRLConfig, ZRLGRPOTrainer


@dataclass
class PreparedRun:
    """A parsed recipe run, ready to train: arguments, plugins (with the behaviour monitor), rows, model path and the
    verifier the held-out evaluation uses."""

    method: str
    recipe: RecipeArguments
    config: Any
    model_args: Any
    extra: tuple[Any, ...]
    plugins: ZRLPluginManager
    train_rows: list[dict[str, Any]]
    eval_rows: list[dict[str, Any]]
    model_path: str
    verifier: Any
    trainer_class: type
    # eval_benchmarks: their rows (prompts from the run's template) and math_correct grading them
    benchmark_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    benchmark_verifier: Any = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # as the template was built (random models: chat off)

    @property
    def eval_budget(self) -> int:
        return self.recipe.eval_max_new_tokens or self.config.max_completion_length

    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            self.model_path, revision=self.model_args.model_revision, trust_remote_code=self.config.trust_remote_code
        )

    def trainer(self, observers: Sequence[Any] = (), before: float | None = None) -> Any:
        """The method's trainer on the training rows (plus held-out rows when the config evaluates during training).
        TRL loads the policy (and its reference model) from ``model_path`` with the model flags; ``observers`` are
        registered as plugins of this run. With held-out rows, a :class:`~zrl_plugins.apps.held_out.HeldOutAccuracy`
        callback measures them when training starts (unless ``before`` is given) and ends."""
        from datasets import Dataset

        from .console import use_console
        from .held_out import HeldOutAccuracy
        from .model_loading import peft_and_quantization

        for observer in observers:
            self.plugins.register_plugin(observer, name=f"{type(observer).__name__}-{id(observer)}")
        evaluating = self.config.eval_strategy != "no" and self.eval_rows
        trainer = self.trainer_class(
            self.model_path,
            args=self.config,
            train_dataset=Dataset.from_list(self.train_rows),
            eval_dataset=Dataset.from_list(self.eval_rows) if evaluating else None,
            processing_class=self.tokenizer(),
            plugin_manager=self.plugins,
            **peft_and_quantization(self.model_args),
        )
        if self.recipe.n_eval or self.recipe.eval_benchmarks:
            log = _printer(self.method)
            rows = self.eval_rows if self.recipe.n_eval else []
            measured = HeldOutAccuracy(
                trainer, rows, self.verifier, self.eval_budget, before, log, self.recipe.eval_every,
                self.benchmark_rows, self.benchmark_verifier, self.recipe.eval_benchmarks_k,
            )  # fmt: skip
            trainer.add_callback(measured)
        return use_console(trainer, self.method)


def _printer(method: str):
    def log(message: str) -> None:
        print(f"[{method}] {message}", flush=True)

    return log


def held_out_results(trainer: Any) -> Any:
    """The run's :class:`~zrl_plugins.apps.held_out.HeldOutAccuracy` callback, or ``None``."""
    from .held_out import HeldOutAccuracy

    return next((c for c in trainer.callback_handler.callbacks if isinstance(c, HeldOutAccuracy)), None)


def cpu_bf16_policy(config: Any, method: str) -> None:
    """Recipes ask for bf16 autocast; a CPU without native bf16 (AVX512-BF16 / AMX) would only emulate it, slower
    than fp32, so a CPU run there trains in fp32 instead, and says so."""
    from .devices import cpu_supports_bf16, cuda_available

    on_cpu = config.use_cpu or not cuda_available()
    if on_cpu and config.bf16 and not cpu_supports_bf16():
        print(
            f"[{method}] this CPU has no native bf16 (AVX512-BF16/AMX): training in fp32 instead of bf16 autocast",
            flush=True,
        )
        config.bf16 = False


def check_selected_names(manager: ZRLPluginManager, config: Any) -> None:
    """Fail now, with the installed list, not after loading the model, on a component name nothing registers."""
    from ..framework.kinds import KINDS

    for kind in KINDS.values():
        selected = getattr(config, kind.config_field, None) if kind.config_field else None
        for name in [selected] if isinstance(selected, str) else selected or ():
            manager.entry(kind.name, name)


def prepare(
    method: str,
    argv: Sequence[str],
    extra_dataclasses: Sequence[type] = (),
    model_workdir: str | None = None,
    plugins: Sequence[Any] = (),
) -> PreparedRun:
    """Parse ``argv`` (``RecipeArguments``, the method's config, the model flags, then ``extra_dataclasses``), pick
    the template and verifiers, build the task's rows and resolve the model (random test models are built under
    ``model_workdir``, default the run's ``output_dir``). ``plugins`` are extra plugin objects registered for this
    run only (e.g. a verifier defined in the calling script)."""
    from .console import quiet_startup

    quiet_startup()
    from ..framework.data_checks import check_training_data
    from ..framework.plugins import ZRLPluginManager
    from ..framework.protocols import NeedsColumns
    from ..trainers.config import parse_config
    from .model_loading import RecipeModelConfig, check_model_flags, model_init_kwargs
    from .models import RANDOM_MODELS, resolve_model
    from .monitor import BehaviourMonitor
    from .tasks import with_prompts

    config_class, trainer_class = trainer_family(method)
    dataclass_types = (RecipeArguments, config_class, RecipeModelConfig, *extra_dataclasses)
    recipe, config, model_args, *extra = parse_config(dataclass_types, expand_preset(method, argv))
    check_model_flags(model_args, config)
    cpu_bf16_policy(config, method)
    manager = ZRLPluginManager()
    manager.register_plugin(BehaviourMonitor(), name="behaviour-monitor")
    for plugin in plugins:
        manager.register_plugin(plugin, name=f"{type(plugin).__name__}-{id(plugin)}")
    template_kwargs = json.loads(recipe.template_kwargs) if recipe.template_kwargs else {}
    if model_args.model_name_or_path in RANDOM_MODELS:
        template_kwargs.setdefault("chat", False)  # the random models' tokenizer has no chat template
    template = manager.load_component("template", recipe.template, **template_kwargs)
    if not config.verifiers:
        config.verifiers, config.verifier_kwargs = default_verifiers(
            recipe, template.answer_format, manager.names("verifier")
        )
    check_selected_names(manager, config)
    train_rows, eval_rows = task_rows(recipe, config.seed if recipe.split_seed is None else recipe.split_seed)
    first = config.verifiers[0]
    verifier = manager.load_component("verifier", first, **config.verifier_kwargs.get(first, {}))
    config.model_init_kwargs = model_init_kwargs(model_args, config)
    train_rows = with_prompts(train_rows, template)
    needed = {first: tuple(verifier.required_columns)} if isinstance(verifier, NeedsColumns) else {}
    check_training_data(train_rows, needed)  # before the model loads
    benchmark_rows, benchmark_verifier = {}, None
    if recipe.eval_every is not None and recipe.eval_every < 1:
        raise ConfigError(f"eval_every must be a number of steps >= 1 (or unset), got {recipe.eval_every}")
    if recipe.eval_benchmarks_n < 1 or recipe.eval_benchmarks_k < 0:
        raise ConfigError(
            f"eval_benchmarks_n must be >= 1 and eval_benchmarks_k >= 0 (0: greedy only), got "
            f"{recipe.eval_benchmarks_n} and {recipe.eval_benchmarks_k}"
        )
    if recipe.eval_benchmarks:  # read before the model loads too
        from . import benchmarks

        chosen = benchmarks.selected(recipe.eval_benchmarks, None)
        benchmark_rows = {
            name: with_prompts(benchmarks.load_benchmark(name, path, limit=recipe.eval_benchmarks_n), template)
            for name, path in chosen
        }
        extraction = template.answer_format if template.answer_format != "last_number" else "auto"
        benchmark_verifier = manager.load_component("verifier", "math_correct", extraction=extraction)
    return PreparedRun(
        method=method,
        recipe=recipe,
        config=config,
        model_args=model_args,
        extra=tuple(extra),
        plugins=manager,
        train_rows=train_rows,
        eval_rows=with_prompts(eval_rows, template),
        model_path=resolve_model(model_args.model_name_or_path, model_workdir or config.output_dir),
        verifier=verifier,
        trainer_class=trainer_class,
        benchmark_rows=benchmark_rows,
        benchmark_verifier=benchmark_verifier,
        template_kwargs=template_kwargs,
    )


def advantage_method(config: Any) -> str:
    """What turns rewards into advantages (and aggregates the loss): the normalizer, or PPO's advantage estimator."""
    return config.normalizer if config.normalizer is not None else config.advantage_estimator


def run(method: str, argv: Sequence[str] | None = None, plugins: Sequence[Any] = ()) -> dict[str, Any]:
    """Parse, train and report one recipe run; returns the summary written to ``summary.json``. ``plugins``: extra
    plugin objects for this run (see :func:`prepare`)."""
    from accelerate import PartialState

    from ..trainers.critic import is_critic_key
    from .devices import describe
    from .model_loading import parameter_counts
    from .plots import plot_training
    from .provenance import run_metadata, wilson_interval

    started = time.time()
    prepared = prepare(method, sys.argv[1:] if argv is None else argv, plugins=plugins)
    recipe, config, model_args = prepared.recipe, prepared.config, prepared.model_args
    state = PartialState()
    trainer = prepared.trainer()
    counts = parameter_counts(trainer.model, exclude=is_critic_key)
    critic = getattr(trainer, "critic", None)
    if critic is not None:
        counts["critic_parameters"] = parameter_counts(critic)["total_parameters"]
    device = describe("cpu" if config.use_cpu or trainer.accelerator.device.type == "cpu" else "cuda", config.bf16)
    if state.is_main_process:
        print(f"[{method}] device: {device}", flush=True)
        print(
            f"[{method}] policy parameters: {counts['trainable_parameters']:,} trainable of "
            f"{counts['total_parameters']:,} ({config.model_init_kwargs.get('dtype')}, "
            f"{'LoRA' if model_args.use_peft else 'full'})",
            flush=True,
        )
    train_started = time.time()
    trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    train_seconds = time.time() - train_started

    summary: dict[str, Any] = {
        "method": method,
        "model": model_args.model_name_or_path,
        "task": recipe.task,
        "template": recipe.template,
        "template_kwargs": prepared.template_kwargs,  # with the template: what `zrl eval` prompts this model with
        "verifiers": config.verifiers,
        "normalizer": advantage_method(config),
        "kl_penalty": config.kl_penalty,
        "rollout": config.rollout,
        "max_steps": config.max_steps,
        "dtype": config.model_init_kwargs.get("dtype"),
        "use_peft": model_args.use_peft,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "num_processes": trainer.accelerator.num_processes,
        **counts,
    }
    held_out = held_out_results(trainer)
    if held_out is not None and held_out.history:  # evaluations during training, by step (the last: the final table)
        summary["evaluations"] = {str(step): metrics for step, metrics in sorted(held_out.history.items())}
    if held_out is not None and held_out.rows:
        n = len(prepared.eval_rows)
        summary.update(
            held_out=n,
            accuracy_before=held_out.before,
            accuracy_after=held_out.after,
            accuracy_before_interval=wilson_interval(held_out.before * n, n),
            accuracy_after_interval=wilson_interval(held_out.after * n, n),
            sample_completions=held_out.completions[:5],
        )
    summary.update(run_metadata(config, prepared.plugins, device, config.model_init_kwargs.get("dtype")))
    if state.is_main_process:
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        summary["seconds"] = round(time.time() - started, 1)
        summary["train_seconds"] = round(train_seconds, 1)
        summary["log_history"] = trainer.state.log_history
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        plot = plot_training(trainer.state.log_history, out / "training.png", title=f"{method} on {recipe.task}")
        written = f"{out / 'summary.json'}" + (f" and {plot}" if plot else "")
        print(f"[{method}] wrote {written}", flush=True)
    return summary


def main(method: str, argv: Sequence[str] | None = None) -> None:
    """Entry point of ``recipes/<method>.py`` and ``zrl train METHOD`` (``argv``: the recipe's arguments)."""
    from .distributed import shutdown_distributed

    run(method, argv)
    shutdown_distributed()
