"""``zrl eval --benchmarks`` / ``--suite``: one model on several benchmarks, each reported as ``zrl eval`` reports a
task (pass@1 with its interval, the pass@k curve and avg@k from samples, lengths, truncation), and their average —
the macro mean over benchmarks, as zero-RL papers' tables give it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .evaluation import evaluate


def evaluate_benchmarks(
    model: Any,
    tokenizer: Any,
    benchmarks: Mapping[str, Sequence[dict[str, Any]]],
    verifier: Callable[..., list[float | None]],
    **generation: Any,
) -> dict[str, Any]:
    """``{"benchmarks": {name: metrics}, "average": {metric: macro mean}}`` (``generation``: as :func:`evaluate`)."""
    results = {name: evaluate(model, tokenizer, rows, verifier, **generation) for name, rows in benchmarks.items()}
    for metrics in results.values():
        metrics.pop("completions", None)
    shared = set.intersection(*(set(m) for m in results.values())) if results else set()
    average = {
        key: sum(m[key] for m in results.values()) / len(results)
        for key in sorted(shared)
        if key.startswith(("pass@", "avg@")) and not key.endswith("_95ci")
    }
    return {"benchmarks": results, "average": average}


def table(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table: a row per benchmark and the average; pass@1 with its 95 % interval."""
    metrics = [k for k in report["average"] if k != "pass@1"]
    header = ["benchmark", "n", "pass@1 (95 % CI)", *metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, m in report["benchmarks"].items():
        low, high = m.get("pass@1_95ci", (m["pass@1"], m["pass@1"]))
        cells = [name, str(m["n"]), f"{m['pass@1']:.3f} ({low:.3f}–{high:.3f})", *(f"{m[k]:.3f}" for k in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    average = report["average"]
    cells = ["average", "", f"{average['pass@1']:.3f}", *(f"{average[k]:.3f}" for k in metrics)]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
