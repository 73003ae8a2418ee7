"""``zrl eval``'s two generation backends on the same problems: vLLM's CPU build against transformers ``generate``.

    bash scripts/setup_vllm.sh && .venv-vllm/bin/python -m bench.eval_backends [--n 64] [--k 4]    # ~20 min

SmolLM2-135M-Instruct on the first ``--n`` held-out problems of the generated two-step word problems (seed 0), the
question as the chat message (``plain``), graded by ``last_number`` (what ``zrl eval --task word_problems`` uses):
one greedy completion and ``--k`` samples (temperature 1) of up to ``--max_new_tokens`` tokens each —
variable-length reasoning, as a math benchmark asks for. Every arm in bf16 as ``zrl eval`` picks it on this CPU
(transformers: fp32 weights under bf16 autocast, batches of 32 problems; vLLM: bf16 weights, ``enforce_eager``, the
whole set in one ``generate`` call), each in a process of its own, one after the other, through
``zrl_plugins.apps.eval_suite.evaluate_problems`` (what the command runs). vLLM runs twice: as it starts by default,
which on its CPU build keeps one core for its front end (here one of two), and with
``VLLM_CPU_NUM_OF_RESERVED_CPU=0``, both cores computing. Reported: start-up (model load; vLLM's engine start),
evaluation wall time and its ratio, generated tokens per second, and the metrics of each arm with 95 % bootstrap
intervals — the backends sample differently, so their numbers agree within noise, not exactly; the greedy
completions are compared one by one.

Writes ``bench/results/eval_backends.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def problems(n: int) -> list[dict[str, Any]]:
    from zrl_plugins import load_component
    from zrl_plugins.apps.recipe import RecipeArguments, task_rows
    from zrl_plugins.apps.tasks import with_prompts

    recipe = RecipeArguments(task="word_problems", task_difficulty=2, n_eval=n)  # n_train: the recipes' default
    return with_prompts(task_rows(recipe, 0)[1], load_component("template", "plain"))


def arm(backend: str, n: int, k: int, max_new_tokens: int, precision: str = "bf16") -> dict[str, Any]:
    """One backend, start to report, in this process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zrl_plugins import load_component
    from zrl_plugins.apps import eval_suite
    from zrl_plugins.apps.generation import TransformersGenerator, VLLMGenerator
    from zrl_plugins.apps.models import smollm2_path

    path = smollm2_path()
    rows = problems(n)
    verifier = load_component("verifier", "last_number")
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if backend.startswith("vllm"):
        dtype = "bfloat16" if precision == "bf16" else "float32"
        inner: Any = VLLMGenerator(path, tokenizer, dtype=dtype, max_model_len=1024)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
        inner = TransformersGenerator(model, tokenizer, autocast)
    start_seconds = time.perf_counter() - started
    tokens = []

    class Counted:  # the generator, counting what it generates
        name, chunk = inner.name, inner.chunk

        def __call__(self, prompts, indices, **options):
            greedy, samples = inner(prompts, indices, **options)
            tokens.append(sum(c.tokens for c in greedy) + sum(c.tokens for row in samples for c in row))
            return greedy, samples

    started = time.perf_counter()
    records = eval_suite.evaluate_problems(
        Counted(), rows, verifier, cache=eval_suite.ProblemCache(None), model_name=backend, benchmark="word_problems",
        max_new_tokens=max_new_tokens, k=k, temperature=1.0,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    metrics = eval_suite.summary(records)
    return {
        "backend": backend,
        "start_seconds": start_seconds,
        "evaluate_seconds": seconds,
        "generated_tokens": sum(tokens),
        "metrics": {key: value for key, value in metrics.items() if key != "pass_at_k_curve"},
        "records": records,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp32"],
        default="bf16",
        help="fp32: transformers and vLLM (both cores) in fp32 only, to tell rounding from a difference in what the "
        "backends compute; writes eval_backends_fp32.{json,md}",
    )
    parser.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # one arm, in the child process
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        Path(args.out).write_text(json.dumps(arm(args.arm, args.n, args.k, args.max_new_tokens, args.precision)))
        return

    from bench.common import write_results
    from zrl_plugins.apps.eval_metrics import paired_difference
    from zrl_plugins.apps.evaluation import is_correct

    results = {}
    arms = {"transformers": {}, "vllm": {}, "vllm, both cores": {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}}
    if args.precision == "fp32":
        del arms["vllm"]
    for backend, env in arms.items():
        out = Path(tempfile.mkdtemp()) / "arm.json"
        command = [sys.executable, "-m", "bench.eval_backends", "--arm", backend, "--out", str(out), "--n",
                   str(args.n), "--k", str(args.k), "--max_new_tokens", str(args.max_new_tokens), "--precision",
                   args.precision]  # fmt: skip
        subprocess.run(command, check=True, env={**os.environ, **env})
        results[backend] = json.loads(out.read_text())
    hf, vllm = results["transformers"], results["vllm, both cores"]
    same_greedy = sum(
        a["completion"] == b["completion"] for a, b in zip(hf["records"], vllm["records"], strict=True)
    ) / len(hf["records"])
    difference, (low, high) = paired_difference(
        [float(is_correct(r["score"])) for r in hf["records"]], [float(is_correct(r["score"])) for r in vllm["records"]]
    )
    k = args.k
    lines = [
        f"SmolLM2-135M-Instruct, {args.n} held-out two-step word problems, plain chat prompt, last_number; greedy + "
        f"{k} samples (temperature 1) of up to {args.max_new_tokens} tokens per problem; {args.precision}; 2 CPU "
        "cores, the arms one after the other.",
        "",
        f"| backend | start (s) | evaluate (s) | speed-up | tokens/s | greedy pass@1 (95 % CI) | avg@{k} | "
        f"pass@{k} | maj@{k} | truncated |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results.values():
        m = result["metrics"]
        lines.append(
            f"| {result['backend']} | {result['start_seconds']:.1f} | {result['evaluate_seconds']:.0f} | "
            f"{hf['evaluate_seconds'] / result['evaluate_seconds']:.2f}x | "
            f"{result['generated_tokens'] / result['evaluate_seconds']:.0f} | {m['pass@1']:.3f} "
            f"({m['pass@1_95ci'][0]:.2f}–{m['pass@1_95ci'][1]:.2f}) | {m[f'avg@{k}']:.3f} | {m[f'pass@{k}']:.3f} | "
            f"{m.get(f'maj@{k}', float('nan')):.3f} | {m['truncation_rate']:.2f} |"
        )
    lines += [
        "",
        f"Identical greedy completions, vLLM (both cores) and transformers: {same_greedy:.2f} of the problems"
        + (" (in bf16 the two round differently)" if args.precision == "bf16" else "")
        + f". Greedy pass@1, vLLM − transformers: {difference:+.3f} ({low:+.3f}–{high:+.3f})."
        + (" The default vLLM start keeps one of the 2 cores for its front end." if "vllm" in arms else ""),
    ]
    payload = {
        "settings": vars(args),
        "arms": {name: {key: v for key, v in r.items() if key != "records"} for name, r in results.items()},
        "identical_greedy_fraction": same_greedy,
        "greedy_pass1_difference": {"vllm_minus_transformers": difference, "95ci": [low, high]},
    }
    write_results("eval_backends" + ("_fp32" if args.precision == "fp32" else ""), payload, "\n".join(lines))


if __name__ == "__main__":
    main()
