"""``zrl`` command line: ``zrl plugins`` lists installed plugins and their components; ``zrl recipes`` the methods,
their presets and config files; ``zrl train METHOD`` runs a recipe (the code path of ``recipes/<method>.py``);
``zrl eval`` measures a model on a task (pass@1, pass@k, lengths, truncation)."""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..framework.errors import ConfigError, ZRLError
from ..framework.kinds import COMPONENT_KINDS
from ..framework.plugins import ZRLPluginManager, get_plugin_manager


def plugins_report(pm: ZRLPluginManager) -> dict[str, list[dict[str, str | None]]]:
    """Plugins and components as plain data (what ``zrl plugins --json`` prints)."""
    plugins = [
        {
            "name": p.name,
            "distribution": p.distribution,
            "version": p.version,
            "status": "broken" if p.broken else "ok",
            "error": p.broken,
        }
        for p in sorted(pm.plugins.values(), key=lambda p: p.name)
    ]
    components = [
        {"kind": e.kind, "name": e.name, "plugin": e.plugin, "distribution": e.distribution, "version": e.version}
        for kind in COMPONENT_KINDS
        for e in sorted(pm.registries[kind].values(), key=lambda e: e.name)
    ]
    return {"plugins": plugins, "components": components}


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def cmd_plugins(args: argparse.Namespace) -> int:
    report = plugins_report(get_plugin_manager())
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = [[c["kind"], c["name"], c["distribution"], c["version"]] for c in report["components"]]
    print(_table(rows, ["kind", "name", "distribution", "version"]))
    broken = [p for p in report["plugins"] if p["status"] == "broken"]
    if broken:
        print("\nbroken plugins (skipped):")
        for p in broken:
            print(f"  {p['name']} ({p['distribution']} {p['version']}): {p['error']}")
    return 0


def check_eval_args(args: argparse.Namespace) -> None:
    """What `zrl eval` would otherwise find out late: before the model loads, or after the whole evaluation."""
    if args.n < 1:
        raise ConfigError(f"--n must be at least 1 held-out problem, got {args.n}")
    if args.k < 0:
        raise ConfigError(f"--k must be 0 (greedy only) or a number of samples per problem, got {args.k}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ConfigError(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}")
    if args.k > 4096:
        raise ConfigError(f"--k is at most 4096 samples per problem (their seeds are spaced 4099 apart), got {args.k}")
    if args.k and not args.temperature > 0:
        raise ConfigError(f"--temperature must be > 0 to sample --k {args.k} completions, got {args.temperature}")
    if args.output:
        from pathlib import Path

        out = Path(args.output)
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".zrl-write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"--output {out} is not writable ({exc.strerror}); nothing was evaluated") from exc


def cmd_eval(args: argparse.Namespace) -> int:
    from .console import quiet_startup

    check_eval_args(args)
    quiet_startup()
    from . import benchmarks, eval_suite
    from .generation import choose_backend
    from .recipe import RecipeArguments, default_verifiers, task_rows
    from .tasks import with_prompts

    pm = get_plugin_manager()
    chosen = benchmarks.selected(args.benchmarks, args.suite)
    suite = benchmarks.SUITES[args.suite] if args.suite else None
    template_name, template_kwargs, why = eval_template(args, suite)
    print(f"template: {template_name} {template_kwargs or ''} ({why})", file=sys.stderr)
    if args.max_new_tokens is None:
        args.max_new_tokens = suite.max_new_tokens if suite is not None else 256
    recipe = RecipeArguments(
        task=args.task,
        task_difficulty=args.task_difficulty,
        tier=args.tier,
        template=template_name,
        n_train=args.n_train,
        n_eval=args.n,
    )
    template = pm.load_component("template", template_name, **template_kwargs)
    if chosen:  # math benchmarks: graded by math_correct unless a verifier is named
        recipe.task = "benchmarks"
    names, kwargs = (
        ([args.verifier], {})
        if args.verifier
        else default_verifiers(recipe, template.answer_format, pm.names("verifier"))
    )
    verifier = pm.load_component("verifier", names[0], **kwargs.get(names[0], {}))
    # the problems are read before any model loads: a data set that does not fit fails first
    if chosen:
        problems = {name: benchmarks.load_benchmark(name, path, limit=args.n) for name, path in chosen}
    else:
        problems = {args.task: task_rows(recipe, args.seed)[1]}
    problems = {name: with_prompts(rows, template) for name, rows in problems.items()}
    generation = {"max_new_tokens": args.max_new_tokens, "k": args.k, "temperature": args.temperature}
    backend = choose_backend(args.backend, args.device)
    # what every score depends on besides the problem and the model (which each record carries a fingerprint of)
    settings = {**generation, "seed": args.seed, "template": template_name, "template_kwargs": template_kwargs,
                "verifier": names[0], "verifier_kwargs": kwargs.get(names[0], {}), "backend": backend}  # fmt: skip
    device, bf16 = eval_device(args)  # as resolved: `auto` on a GPU and on a CPU are different settings
    settings.update(device=device, precision="bf16" if bf16 else "fp32")
    if backend == "vllm":
        from ..trainers.vllm_cpu import vllm_runs_on_cpu

        settings["device"] = "cpu" if vllm_runs_on_cpu() else "cuda"
    if not args.k:
        del settings["temperature"]  # greedy only: the temperature changes nothing
    cache = eval_suite.ProblemCache(Path(args.output) / "problems.jsonl" if args.output else None, settings)
    per_model, where = {}, ""
    for model_name in args.model:
        generate, where, model_id = _generator(args, model_name, backend, problems)
        try:
            per_model[model_name] = {
                name: eval_suite.evaluate_problems(
                    generate,
                    rows,
                    verifier,
                    cache=cache,
                    model_name=model_name,
                    benchmark=name,
                    seed=args.seed,
                    model_id=model_id,
                    **generation,
                )
                for name, rows in problems.items()
            }
        finally:
            close = getattr(generate, "close", None)
            if close is not None:
                close()
    reports = {name: eval_suite.report(per_benchmark) for name, per_benchmark in per_model.items()}
    header = {
        "template": template_name,
        "template_kwargs": template_kwargs,
        "verifier": names[0],
        "backend": backend,
        "device": where,
    }
    if not chosen and len(args.model) == 1:  # one model on one task: the flat report
        records = per_model[args.model[0]][args.task]
        metrics = {"model": args.model[0], "task": args.task, **header, **eval_suite.summary(records)}
        metrics["completions"] = [r["completion"] for r in records[:20]]
        table = "| metric | value |\n|---|---|\n" + "\n".join(
            f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in metrics.items()
            if k != "completions" and not isinstance(v, dict | list)
        )
        code = _write_report(args.output, metrics, table)
    else:
        differences = eval_suite.paired(per_model) if len(per_model) > 1 else {}
        if len(reports) == 1:
            result = {"model": args.model[0], **header, **next(iter(reports.values()))}
        else:
            result = {**header, "models": reports, "paired_differences": differences}
        code = _write_report(args.output, result, eval_suite.table(reports, differences))
    if args.output:
        eval_suite.plot_pass_at_k(reports, Path(args.output) / "passk.png")
    return code


def trained_template(model: str) -> tuple[str, dict[str, Any]] | None:
    """The template a zrl run trained ``model`` with: its ``summary.json``, in the model's folder (a recipe's
    ``output_dir``) or the one above it (a checkpoint's); ``None`` for other models."""
    for folder in (Path(model), Path(model).parent):
        summary = folder / "summary.json"
        if Path(model).is_dir() and summary.is_file():
            try:
                written = json.loads(summary.read_text())
            except ValueError:
                return None
            if isinstance(written, dict) and isinstance(written.get("template"), str):
                return written["template"], dict(written.get("template_kwargs") or {})
    return None


def eval_template(args: argparse.Namespace, suite: Any) -> tuple[str, dict[str, Any], str]:
    """``zrl eval``'s prompt template, its keyword arguments and why: ``--template``; else the suite's (a paper's
    protocol, asked for by name); else the one the models were trained with (every model evaluated with the same
    one, so that their difference is the models'); else ``plain``. ``--template_kwargs`` update the keyword
    arguments of whichever it is."""
    given = json.loads(args.template_kwargs) if args.template_kwargs else {}
    if args.template is not None:
        return args.template, given, "--template"
    if suite is not None:
        return suite.template, {**suite.template_kwargs, **given}, f"the {args.suite} suite's"
    trained = {m: t for m in args.model if (t := trained_template(m)) is not None}
    if len({json.dumps(t, sort_keys=True) for t in trained.values()}) > 1:
        listed = "; ".join(f"{m}: {t[0]} {t[1]}" for m, t in trained.items())
        raise ConfigError(f"the models were trained with different templates ({listed}); choose one with --template")
    if trained:
        model, (name, kwargs) = next(iter(trained.items()))
        return name, {**kwargs, **given}, f"the template {model} was trained with, from its summary.json"
    return "plain", given, "the default"


def eval_device(args: argparse.Namespace) -> tuple[str, bool]:
    """``--device`` and ``--precision`` resolved: (``cuda`` or ``cpu``, whether to compute in bf16)."""
    import torch

    from .devices import cpu_supports_bf16, cuda_available

    device = args.device if args.device != "auto" else ("cuda" if cuda_available() else "cpu")
    native_bf16 = torch.cuda.is_bf16_supported() if device == "cuda" else cpu_supports_bf16()
    return device, args.precision == "bf16" or (args.precision == "auto" and native_bf16)


def model_fingerprint(path: str | Path) -> str:
    """What identifies a model's weights for the results cache: the names, sizes and modification times of its
    weight files (a model retrained into the same folder is a new model); for a Hub id, its revision."""
    folder = Path(path)
    if not folder.is_dir():  # a Hub id: the revision the local copy is at
        try:
            from transformers import AutoConfig

            return f"{path}@{AutoConfig.from_pretrained(str(path))._commit_hash}"
        except (OSError, ValueError):
            return str(path)
    files = sorted(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns)
        for f in folder.iterdir()
        if f.suffix in (".safetensors", ".bin", ".pt", ".gguf") or f.name == "config.json"
    )
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def _generator(
    args: argparse.Namespace, name: str, backend: str, problems: dict[str, list[dict[str, Any]]]
) -> tuple[Any, str, str]:
    """``zrl eval``'s generator for the model ``name`` (its path or hub id), its device in words, and the model's
    fingerprint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .devices import describe
    from .evaluation import _prompt_text
    from .generation import TransformersGenerator, VLLMGenerator
    from .models import resolve_model

    device, bf16 = eval_device(args)
    path = resolve_model(name, args.output or ".")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if backend == "vllm":  # vLLM computes in the dtype itself (no autocast): bf16 weights where bf16 is native
        from ..trainers.vllm_cpu import vllm_runs_on_cpu

        # the context vLLM reserves: the longest prompt and the budget, not the model's whole window (a 32k window
        # would size every engine step and the KV cache for one 32k sequence)
        longest = max(
            len(tokenizer(_prompt_text(tokenizer, row["prompt"]), add_special_tokens=False)["input_ids"])
            for rows in problems.values()
            for row in rows
        )
        window = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
        context: int | None = longest + args.max_new_tokens
        if window is not None and context > window:  # vLLM's own window (rope scaling included); requests are
            context = None  # capped to it, and a completion cut there counts as truncated
        where = f"vLLM on {'cpu' if vllm_runs_on_cpu() else 'gpu'}, {'bf16' if bf16 else 'fp32'}"
        print(f"{name}: {where}", file=sys.stderr)
        generate = VLLMGenerator(str(path), tokenizer, dtype="bfloat16" if bf16 else "float32", max_model_len=context)
        return generate, where, model_fingerprint(path)
    model = AutoModelForCausalLM.from_pretrained(path).to(device)
    print(f"{name}: device {describe(device, bf16)}", file=sys.stderr)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)
    return TransformersGenerator(model, tokenizer, autocast), describe(device, bf16), model_fingerprint(path)


def _write_report(output: str | None, report: dict[str, Any], table: str) -> int:
    """Print the table; with ``--output``, write ``eval.json`` (everything) and ``eval.md`` (the table)."""
    print(table)
    if output:
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(report, indent=2))
        (out / "eval.md").write_text(table + "\n")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from .recipe import list_recipes, recipes_dir

    recipes = list_recipes()
    if args.json:
        print(json.dumps({"recipes_dir": str(recipes_dir()), "recipes": recipes}, indent=2))
        return 0
    rows = [[method, r["trainer"], ", ".join(r["presets"]) or "-", r["config"]] for method, r in recipes.items()]
    print(_table(rows, ["method", "trainer", "presets", "paper config"]))
    print(f"\naccelerate configs: {recipes_dir() / 'accelerate'}")
    print("run one: zrl train METHOD --preset cpu-demo  |  zrl train METHOD --config FILE [--key value ...]")
    return 0


def cmd_train(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from .recipe import METHODS, main

    if args.method not in METHODS:
        close = difflib.get_close_matches(args.method, list(METHODS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        print(f"zrl train: unknown method {args.method!r}; methods: {', '.join(METHODS)}.{hint}", file=sys.stderr)
        return 2
    main(args.method, list(rest))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zrl", description="zero-RL training on TRL with plugins")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('zrl_plugins').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_plugins = sub.add_parser("plugins", help="list installed plugins and the components they register")
    p_plugins.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p_plugins.set_defaults(func=cmd_plugins)
    p_eval = sub.add_parser("eval", help="pass@1 (greedy) / pass@k accuracy, lengths and truncation on a task")
    p_eval.add_argument(
        "--model",
        required=True,
        action="append",
        help="path or hub id; `smollm2` / `tiny` as in the recipes. Given twice or more (e.g. base, then trained): "
        "every model on the same problems, the paired difference to the first, and passk.png",
    )
    p_eval.add_argument("--task", default="addition", help="addition | word_problems | countdown | records file/hub")
    p_eval.add_argument("--task_difficulty", type=int, default=2)
    p_eval.add_argument("--tier", default=None, help="easy | medium | hard (MATH-style records)")
    p_eval.add_argument(
        "--template",
        default=None,
        help="prompt template by name (default: the one a zrl run trained the model with, from its summary.json; "
        "else the suite's; else plain)",
    )
    p_eval.add_argument("--template_kwargs", default=None, help="JSON keyword arguments of the template")
    p_eval.add_argument("--verifier", default=None, help="verifier by name (default: the task's)")
    p_eval.add_argument(
        "--benchmarks",
        default=None,
        help="math benchmarks by name, comma-separated (gsm8k, math500, minerva, olympiadbench, aime24, amc23); "
        "name=FILE reads a local file in that benchmark's schema. Graded by math_correct unless --verifier",
    )
    p_eval.add_argument(
        "--suite",
        default=None,
        help="a paper's evaluation: simplerl_zoo (SimpleRL-Zoo's six benchmarks, its qwen-boxed prompt, greedy, up "
        "to 16,000 new tokens; --template / --max_new_tokens override)",
    )
    p_eval.add_argument("--n", type=int, default=200, help="problems (the recipes' held-out split; per benchmark)")
    p_eval.add_argument(
        "--n_train",
        type=int,
        default=2000,
        help="the run's n_train: with --n (its n_eval) and --seed, the generated tasks' held-out split is the run's",
    )
    p_eval.add_argument("--k", type=int, default=0, help="samples per problem for pass@k (0 = greedy only)")
    p_eval.add_argument("--temperature", type=float, default=1.0)
    p_eval.add_argument(
        "--max_new_tokens", type=int, default=None, help="generation budget (default: the suite's, else 256)"
    )
    p_eval.add_argument("--seed", type=int, default=0, help="the recipes' seed, so the split matches")
    p_eval.add_argument("--output", default=None, help="directory for eval.json and eval.md")
    p_eval.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: the GPU if visible")
    p_eval.add_argument(
        "--backend",
        choices=["auto", "vllm", "transformers"],
        default="auto",
        help="generation: vLLM where it is installed and has a device (GPU, or vLLM's CPU build), else transformers",
    )
    p_eval.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="auto",
        help="auto: bf16 autocast where the device computes bf16 natively (AVX512-BF16/AMX CPUs)",
    )
    p_eval.set_defaults(func=cmd_eval)
    p_recipes = sub.add_parser("recipes", help="list the methods, their presets and config files")
    p_recipes.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p_recipes.set_defaults(func=cmd_recipes)
    p_train = sub.add_parser(
        "train",
        add_help=False,
        help="run a recipe: zrl train METHOD [--preset P | --config F] [--key value ...] (--help: its options)",
    )
    p_train.add_argument("method")
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        return cmd_train(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except ZRLError as exc:  # a message written for the user (two plugins registering one name, a bad option)
        print(f"zrl {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
