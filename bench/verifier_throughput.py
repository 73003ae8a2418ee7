"""Verifier throughput: math_correct items/s, serial (in process) vs parallel worker processes, same 2,000 cases.

python -m bench.verifier_throughput [--n 2000] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import random
import time


def cases(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Completions in the styles models write (boxed LaTeX, "the answer is", plain numbers), right and wrong."""
    rng = random.Random(seed)
    completions, golds = [], []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(2, 12)
        kind = rng.randrange(6)
        if kind == 0:
            gold, answer = f"\\frac{{{a}}}{{{b}}}", f"{a / b:.6f}"
        elif kind == 1:
            gold, answer = str(a * b), f"\\boxed{{{a * b + rng.choice([0, 0, 1])}}}"
        elif kind == 2:
            gold, answer = f"{a}\\%", f"{a / 100}"
        elif kind == 3:
            gold, answer = f"({a}, {b}]", f"({a},{b}{rng.choice([']', ')'])}"
        elif kind == 4:
            gold, answer = f"\\sqrt{{{b * b}}}", str(b)
        else:
            gold, answer = f"x^2 + {a}x", f"x({a} + x)"
        completions.append(f"Let me work it out step by step. ... So the answer is {answer}. \\boxed{{{answer}}}")
        golds.append(gold)
    return completions, golds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args()

    from bench.common import write_results
    from zrl_plugins import load_component

    completions, golds = cases(args.n)
    prompts = [""] * len(completions)
    results = {}
    for label, workers in (("serial", 0), ("parallel", args.workers)):
        verifier = load_component("verifier", "math_correct", num_workers=workers)
        verifier(prompts=prompts[:4], completions=completions[:4], answer=golds[:4])  # start workers, warm caches
        start = time.perf_counter()
        rewards = verifier(prompts=prompts, completions=completions, answer=golds)
        seconds = time.perf_counter() - start
        verifier.grader.close()
        results[label] = {
            "workers": workers,
            "items_per_s": len(rewards) / seconds,
            "mean_reward": sum(rewards) / len(rewards),
        }
        print(f"{label}: {results[label]['items_per_s']:.1f} items/s")
    assert results["serial"]["mean_reward"] == results["parallel"]["mean_reward"], "parallel grading changed rewards"
    ratio = results["parallel"]["items_per_s"] / results["serial"]["items_per_s"]
    payload = {"benchmark": "math_correct throughput, parallel / serial", "items": args.n, "ratio": ratio, **results}
    table = (
        "| items | workers | serial items/s | parallel items/s | parallel / serial |\n|---|---|---|---|---|\n"
        f"| {args.n} | {args.workers} | {results['serial']['items_per_s']:.1f} | "
        f"{results['parallel']['items_per_s']:.1f} | {ratio:.2f} |"
    )
    write_results("verifier_throughput", payload, table)


if __name__ == "__main__":
    main()
