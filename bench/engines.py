"""The engine matrix: every method under every training engine, on a random model, with a save and a resume.

    python -m bench.engines                         # every cell; num_processes = the visible GPUs
    python -m bench.engines --engines zero3 --recipes ppo_max,nested_reft --parallel 1
    python -m bench.engines --device cpu --model small   # CPU: DDP/FSDP2 as 2 gloo processes, DeepSpeed as 1

Cells: {ddp, fsdp2, zero2, zero3} × {simplerl_zoo (k3 reference model), ppo_max (separate critic), ppo_max_shared,
nested_reft, dr_grpo_dynamic_sampling, simplerl_zoo_lora}. Each cell runs ``bench/engine_cell.py`` under
``accelerate launch`` with the engine's config from ``recipes/accelerate/``: ``--steps`` steps and a checkpoint,
then a fresh launch that resumes from it for one more step. Per cell it records ``ok``, ``grad_nonzero`` (gradient
norm > 0 at every step; the GRPO loss itself is ~0 on-policy), ``params_changed`` (the trained weights — and a PPO
critic's — differ from the initial ones), ``resumed`` (the resumed run starts from exactly the saved weights and
takes its step), mean step time (steps 2..n), peak GPU memory and the step-1 gradient norm over actor and critic
(the same inputs on every engine: it should agree within bf16 tolerance). Writes ``bench/results/engines_<device>``
``.json`` and ``.md``.
Cells run ``--parallel`` at a time (they share the GPU then: step times are measured under that load).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("ddp", "fsdp2", "zero2", "zero3")
ACCELERATE_CONFIGS = {
    "ddp": "multi_gpu.yaml",
    "fsdp2": "fsdp2.yaml",
    "zero2": "deepspeed_zero2.yaml",
    "zero3": "deepspeed_zero3.yaml",
}


def _ppo_max(critic_mode: str) -> list[str]:
    """PPO-max's flags on a bare config, with the critic kept separate or as a head on the policy."""
    return [
        "--advantage_estimator",
        "gae",
        "--kl_penalty",
        "k1",
        "--beta",
        "0.01",
        "--critic_mode",
        critic_mode,
        "--critic_learning_rate",
        "1e-5",
    ]


# cell name → (recipe method, the flags that make it that method on a bare config)
RECIPES: dict[str, tuple[str, list[str]]] = {
    "simplerl_zoo": ("simplerl_zoo", ["--normalizer", "grpo", "--kl_penalty", "k3", "--beta", "0.04"]),
    "ppo_max": ("ppo_max", _ppo_max("separate")),
    "ppo_max_shared": ("ppo_max", _ppo_max("shared")),
    # padding_free: packed rows through the engine's forward, critic values included
    "ppo_max_packed": ("ppo_max", [*_ppo_max("separate"), "--padding_free", "true"]),
    "nested_reft": (
        "nested_reft",
        [
            "--normalizer",
            "grpo",
            "--kl_penalty",
            "none",
            "--beta",
            "0",
            "--rollout",
            "nested",
            "--rollout_kwargs",
            '{"skip_ratio": 0.25}',
            "--rollout_correction",
            "token_tis",
        ],
    ),
    "dr_grpo_dynamic_sampling": (
        "dr_grpo",
        [
            "--normalizer",
            "dr_grpo",
            "--kl_penalty",
            "none",
            "--beta",
            "0",
            "--rollout",
            "dynamic_sampling",
            "--rollout_kwargs",
            '{"max_resamples": 2}',
        ],
    ),
    "simplerl_zoo_lora": (
        "simplerl_zoo",
        [
            "--normalizer",
            "grpo",
            "--kl_penalty",
            "k3",
            "--beta",
            "0.04",
            "--use_peft",
            "--lora_r",
            "8",
            "--lora_alpha",
            "16",
            "--learning_rate",
            "1e-4",
        ],
    ),
}
PPO_CELLS = ("ppo_max", "ppo_max_shared", "ppo_max_packed")
Launcher = Callable[[list[str], dict[str, str], float], int]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(
    engine: str, recipe: str, phase: str, workdir: Path, model: str, steps: int, device: str, num_processes: int
) -> tuple[list[str], dict[str, str]]:
    """The ``accelerate launch`` command line and environment of one phase of one cell."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port())]
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {"TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": pythonpath}
    if device == "cpu" and engine in ("ddp", "fsdp2"):  # gloo processes; FSDP forced on CPU by the cell itself
        launch += [
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
        if engine == "fsdp2":
            from zrl_plugins.apps.devices import FSDP2_CPU_ENV

            env.update(FSDP2_CPU_ENV)
        env["OMP_NUM_THREADS"] = "1"
    else:
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "2")  # cells run side by side
        config = ROOT / "recipes" / "accelerate" / ACCELERATE_CONFIGS[engine]
        launch += [
            "--config_file",
            str(config),
            "--num_processes",
            str(num_processes),
            "--mixed_precision",
            "bf16" if device == "cuda" else "no",
        ]
    cell = [
        "-m",
        "bench.engine_cell",
        "--engine",
        engine,
        "--recipe",
        recipe,
        "--phase",
        phase,
        "--workdir",
        str(workdir),
        "--model",
        model,
        "--steps",
        str(steps),
    ]
    return launch + cell, env


def subprocess_launcher(log_path: Path) -> Launcher:
    def launch(command: list[str], env: dict[str, str], timeout: float) -> int:
        with open(log_path, "a") as log:
            try:
                return subprocess.run(
                    command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT
                ).returncode
            except subprocess.TimeoutExpired:
                log.write(f"\n[engines] timed out after {timeout} s\n")
                return 124

    return launch


def _close(a: dict[str, list[float]], b: dict[str, list[float]], rel: float = 1e-5) -> bool:
    if not a or a.keys() != b.keys():
        return False
    return all(abs(x - y) <= rel * max(abs(x), abs(y), 1e-12) for k in a for x, y in zip(a[k], b[k], strict=True))


def _changed(begin: dict[str, list[float]], end: dict[str, list[float]]) -> bool:
    return bool(begin) and begin.keys() == end.keys() and not _close(begin, end, rel=0.0)


def verdict(recipe: str, steps: int, train: dict[str, Any] | None, resume: dict[str, Any] | None) -> dict[str, Any]:
    """The cell's flags and measurements from the two phases' result files (``None``: the phase failed)."""
    ok = train is not None and resume is not None
    norms = [*(train or {}).get("grad_norm", []), *(resume or {}).get("grad_norm", [])]
    changed = train is not None and _changed(train["policy_begin"], train["policy_end"])
    if changed and recipe in PPO_CELLS:
        changed = _changed(train["critic_begin"], train["critic_end"])
    resumed = (
        ok
        and resume["step_begin"] == steps
        and resume["step_end"] == steps + 1
        and _close(train["policy_end"], resume["policy_begin"])
        and (recipe not in PPO_CELLS or _close(train["critic_end"], resume["critic_begin"]))
    )
    times = [t for t in (train or {}).get("step_time", [])[1:] if t is not None]
    first = (train or {}).get("grad_norm", [None])[0]
    critic_first = ((train or {}).get("critic_grad_norm") or [None])[0]
    if first is not None and critic_first is not None:  # actor and critic clipped apart: compare the global norm
        first = (first**2 + critic_first**2) ** 0.5
    return {
        "ok": ok,
        "grad_nonzero": ok and len(norms) == steps + 1 and all(n is not None and n > 0 for n in norms),
        "params_changed": changed,
        "resumed": bool(resumed),
        "grad_norm_step1": first,
        "step_time_s": round(sum(times) / len(times), 3) if times else None,
        "peak_memory_mib": (train or {}).get("peak_memory_mib"),
        "distributed_type": (train or {}).get("distributed_type"),
        "num_processes": (train or {}).get("num_processes"),
        "trainable_parameters": (train or {}).get("trainable_parameters"),
        "total_parameters": (train or {}).get("total_parameters"),
    }


def run_cell(
    engine: str,
    recipe: str,
    root: Path,
    model: str,
    steps: int,
    device: str,
    num_processes: int,
    launcher: Launcher | None = None,
    timeout: float = 600,
    keep: bool = False,
) -> dict[str, Any]:
    """Train, then resume, one cell; returns its record (``green`` when every flag holds)."""
    import shutil

    workdir = root / f"{engine}-{recipe}"
    workdir.mkdir(parents=True, exist_ok=True)
    launcher = launcher or subprocess_launcher(workdir / "log.txt")
    phases: dict[str, dict[str, Any] | None] = {}
    codes = {}
    for phase in ("train", "resume"):
        command, env = launch_command(engine, recipe, phase, workdir, model, steps, device, num_processes)
        codes[phase] = launcher(command, env, timeout)
        path = workdir / f"{phase}.json"
        phases[phase] = json.loads(path.read_text()) if codes[phase] == 0 and path.exists() else None
        if phases[phase] is None:
            break
    record = {
        "engine": engine,
        "recipe": recipe,
        **verdict(recipe, steps, phases.get("train"), phases.get("resume")),
        "return_codes": codes,
    }
    record["green"] = all(record[k] for k in ("ok", "grad_nonzero", "params_changed", "resumed"))
    log = workdir / "log.txt"
    if not record["green"] and log.exists():
        record["log_tail"] = log.read_text(errors="replace")[-3000:]
    if not keep:  # checkpoints of a ~180M model with optimizer state are GBs: one cell's at a time
        shutil.rmtree(workdir / "run", ignore_errors=True)
    return record


def markdown(cells: Sequence[dict[str, Any]], device: str) -> str:
    def flag(value: Any) -> str:
        return "yes" if value else "**no**"

    lines = [
        "| engine | recipe | ok | grad ≠ 0 | params changed | resumed | step 1 grad norm | step time (s) | "
        "peak GPU memory (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        norm = f"{c['grad_norm_step1']:.4g}" if c.get("grad_norm_step1") is not None else "–"
        lines.append(
            f"| {c['engine']} | {c['recipe']} | {flag(c['ok'])} | {flag(c['grad_nonzero'])} | "
            f"{flag(c['params_changed'])} | {flag(c['resumed'])} | {norm} | {c.get('step_time_s') or '–'} | "
            f"{c.get('peak_memory_mib') or '–'} |"
        )
    spreads = []
    for recipe in dict.fromkeys(c["recipe"] for c in cells):
        norms = [c["grad_norm_step1"] for c in cells if c["recipe"] == recipe and c.get("grad_norm_step1")]
        if len(norms) > 1:
            spreads.append(f"{recipe} {min(norms):.4g}–{max(norms):.4g} ({(max(norms) / min(norms) - 1) * 100:.2f} %)")
    green = sum(c["green"] for c in cells)
    lines += [
        "",
        f"{green} of {len(cells)} cells green on {device}. Step-1 gradient norm across engines: "
        + ("; ".join(spreads) or "–")
        + ".",
    ]
    return "\n".join(lines)


def run_matrix(
    engines: Sequence[str],
    recipes: Sequence[str],
    root: Path,
    model: str,
    steps: int,
    device: str,
    num_processes: int,
    parallel: int = 1,
    launcher: Launcher | None = None,
    timeout: float = 600,
    on_cell: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every engine × recipe cell, ``parallel`` at a time; ``on_cell`` sees the finished cells after each one."""
    cells: list[dict[str, Any]] = []
    lock = threading.Lock()
    order = [(e, r) for e in engines for r in recipes]

    def one(cell: tuple[str, str]) -> None:
        record = run_cell(*cell, root, model, steps, device, num_processes, launcher, timeout)
        with lock:
            cells.append(record)
            cells.sort(key=lambda c: order.index((c["engine"], c["recipe"])))
            print(f"[engines] {record['engine']:6s} {record['recipe']:26s} green={record['green']}", flush=True)
            if on_cell is not None:
                on_cell(list(cells))

    with ThreadPoolExecutor(max_workers=max(parallel, 1)) as pool:
        list(pool.map(one, order))
    return cells


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--model", default="medium", help="a random model (medium: 12 layers, 126M) or a path")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--parallel", type=int, default=1, help="cells run at once (they share the GPU)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per launch")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--copy-to", default=None, help="also write the JSON and table here after every cell")
    args = parser.parse_args(argv)

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    engines = [e for e in args.engines.split(",") if e]
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = [e for e in engines if e not in ENGINES] + [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown engines/recipes {unknown}; engines: {ENGINES}; recipes: {list(RECIPES)}")
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    tag = name.split()[-1].split("-")[0].lower() if device == "cuda" else "cpu"  # "NVIDIA H200" -> h200
    root = Path(args.workdir or tempfile.mkdtemp(prefix="zrl-engines-"))
    from zrl_plugins.apps.models import resolve_model

    resolve_model(args.model, root / "models")  # built once, before cells that share it start

    from bench.common import write_results

    def save(cells: list[dict[str, Any]]) -> None:
        payload = {
            "device": name,
            "num_processes": gpus or None,
            "model": args.model,
            "steps": args.steps,
            "parallel": args.parallel,
            "cells": cells,
        }
        if args.copy_to:
            out = Path(args.copy_to)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"engines_{tag}.json").write_text(json.dumps(payload, indent=2))
            (out / f"engines_{tag}.md").write_text(markdown(cells, name) + "\n")

    cells = run_matrix(
        engines,
        recipes,
        root,
        args.model,
        args.steps,
        device,
        max(gpus, 1),
        args.parallel,
        timeout=args.timeout,
        on_cell=save,
    )
    payload = {
        "device": name,
        "num_processes": gpus or None,
        "model": args.model,
        "steps": args.steps,
        "parallel": args.parallel,
        "cells": cells,
    }
    save(cells)
    write_results(f"engines_{tag}", payload, markdown(cells, name))
    return cells


if __name__ == "__main__":
    main()
