"""``zrl eval --benchmarks`` / ``--suite`` / several ``--model``: every benchmark evaluated per problem, in chunks
whose results go to ``<output>/problems.jsonl`` as they are scored — a killed evaluation resumes where it stopped and
a finished one re-reports without generating — then reported as ``zrl eval`` reports a task (pass@1 with its
interval, the pass@k curve and avg@k from samples, lengths, truncation), with the macro average over benchmarks as
zero-RL papers' tables give it, and, for several models, the paired difference to the first one per benchmark and
their pass@k curves in one figure (``passk.png``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .eval_metrics import paired_difference, pass_at_k_curve
from .evaluation import generate_completions, is_correct, prompts_and_columns, summarize_scores
from .monitor import BEHAVIOUR_RULES, behaviours

CHUNK = 32  # problems generated and scored together, then cached


class ProblemCache:
    """Scored problems, one JSON line each, keyed by (model, benchmark, problem index); ``None``: keep nothing."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self.records: dict[tuple[str, str, int], dict[str, Any]] = {}
        if self.path is not None and self.path.exists():
            text = self.path.read_text()
            damaged = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # the last line of a killed run may be cut: it is scored again
                    damaged = True
                    continue
                self.records[(record["model"], record["benchmark"], record["index"])] = record
            if damaged:  # keep the whole records only, so that appending starts on a line of its own
                self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records.values()))

    def get(self, model: str, benchmark: str, index: int) -> dict[str, Any] | None:
        return self.records.get((model, benchmark, index))

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            self.records[(record["model"], record["benchmark"], record["index"])] = record
        if self.path is not None:
            with self.path.open("a") as f:
                f.writelines(json.dumps(record) + "\n" for record in records)


def evaluate_problems(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    verifier: Callable[..., list[float | None]],
    *,
    cache: ProblemCache,
    model_name: str,
    benchmark: str,
    max_new_tokens: int = 256,
    k: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Each problem's greedy score, length and truncation and its ``k`` sample scores, from the cache where it is
    there; the rest generated in chunks of :data:`CHUNK` (sampling seeded by the chunk's first problem and the
    sample's index), cached as each chunk is scored, with a progress line and an ETA."""
    todo = [i for i in range(len(rows)) if cache.get(model_name, benchmark, i) is None]
    started, done = time.monotonic(), 0
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start : start + CHUNK]
        prompts, columns = prompts_and_columns([rows[i] for i in chunk])
        stats: list[tuple[int, bool]] = []
        greedy = generate_completions(model, tokenizer, prompts, max_new_tokens, CHUNK, stats=stats)
        scores = verifier(prompts=prompts, completions=greedy, **columns)
        samples: list[list[float | None]] = []
        for s in range(k):
            torch.manual_seed(seed * 1_000_003 + chunk[0] * 1009 + s)
            texts = generate_completions(
                model, tokenizer, prompts, max_new_tokens, CHUNK, do_sample=True, temperature=temperature, top_p=1.0,
                top_k=0,
            )  # fmt: skip
            samples.append(verifier(prompts=prompts, completions=texts, **columns))
        cache.add(
            [
                {
                    "model": model_name,
                    "benchmark": benchmark,
                    "index": i,
                    "score": scores[j],
                    "length": stats[j][0],
                    "truncated": stats[j][1],
                    "samples": [samples[s][j] for s in range(k)],
                    "completion": greedy[j],
                }
                for j, i in enumerate(chunk)
            ]
        )
        done += len(chunk)
        rate = (time.monotonic() - started) / done
        print(
            f"{model_name} / {benchmark}: {len(rows) - len(todo) + done}/{len(rows)} problems, "
            f"ETA {rate * (len(todo) - done):.0f} s",
            file=sys.stderr,
            flush=True,
        )
    return [cache.get(model_name, benchmark, i) for i in range(len(rows))]


def summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``zrl eval``'s metrics of a benchmark's per-problem records."""
    sampled = [r["samples"] for r in records] if records and records[0]["samples"] else None
    metrics = summarize_scores(
        [r["score"] for r in records], [r["length"] for r in records], [r["truncated"] for r in records], sampled
    )
    if sampled:
        curve = pass_at_k_curve([[is_correct(s) for s in row] for row in sampled])
        metrics["pass_at_k_curve"] = {str(size): point for size, point in curve.items()}
    shown = [behaviours(r.get("completion", "")) for r in records]
    for name in BEHAVIOUR_RULES:  # the reasoning behaviours of the greedy answers, by the monitor's rules
        metrics[f"behaviour/{name}"] = sum(s[name] for s in shown) / max(len(shown), 1)
    return metrics


def report(per_benchmark: Mapping[str, Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """``{"benchmarks": {name: metrics}, "average": {metric: macro mean}}`` of one model."""
    results = {name: summary(records) for name, records in per_benchmark.items()}
    shared = set.intersection(*(set(m) for m in results.values())) if results else set()
    average = {
        key: sum(m[key] for m in results.values()) / len(results)
        for key in sorted(shared)
        if key.startswith(("pass@", "avg@")) and not key.endswith("_95ci")
    }
    return {"benchmarks": results, "average": average}


def paired(
    per_model: Mapping[str, Mapping[str, Sequence[dict[str, Any]]]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Greedy accuracy of each model after the first, minus the first's, per benchmark, on the same problems."""
    base, *others = list(per_model)
    differences: dict[str, dict[str, dict[str, Any]]] = {}
    for other in others:
        for benchmark, records in per_model[other].items():
            a = [float(is_correct(r["score"])) for r in per_model[base][benchmark]]
            b = [float(is_correct(r["score"])) for r in records]
            mean, (low, high) = paired_difference(a, b)
            differences.setdefault(other, {})[benchmark] = {"minus": base, "difference": mean, "95ci": [low, high]}
    return differences


def table(reports: Mapping[str, Mapping[str, Any]], differences: Mapping[str, Any] | None = None) -> str:
    """A Markdown table: per benchmark (and the average), each model's pass@1 with its interval and the metrics
    from samples; for several models, the paired difference to the first."""
    lines = []
    for model, result in reports.items():
        metrics = [k for k in result["average"] if k != "pass@1"]
        header = ["model", "benchmark", "n", "pass@1 (95 % CI)", *metrics]
        if not lines:
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, m in result["benchmarks"].items():
            low, high = m.get("pass@1_95ci", (m["pass@1"], m["pass@1"]))
            pass1 = f"{m['pass@1']:.3f} ({low:.3f}–{high:.3f})"
            lines.append("| " + " | ".join([model, name, str(m["n"]), pass1, *(f"{m[k]:.3f}" for k in metrics)]) + " |")
        average = result["average"]
        cells = [model, "average", "", f"{average['pass@1']:.3f}", *(f"{average[k]:.3f}" for k in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    for other, per_benchmark in (differences or {}).items():
        base = next(iter(per_benchmark.values()))["minus"]
        lines += ["", f"Paired difference of greedy pass@1, {other} minus {base}:", ""]
        lines += ["| benchmark | difference (95 % CI) |", "|---|---|"]
        for name, d in per_benchmark.items():
            lines.append(f"| {name} | {d['difference']:+.3f} ({d['95ci'][0]:+.3f}–{d['95ci'][1]:+.3f}) |")
    return "\n".join(lines)


def plot_pass_at_k(reports: Mapping[str, Mapping[str, Any]], path: str | Path) -> Path | None:
    """pass@k against k (log scale) with 95 % bands, a panel per benchmark, a line per model (the papers'
    figure); ``None`` without matplotlib or without samples."""
    from .plots import MISSING_MATPLOTLIB, pyplot

    benchmarks = [b for b in next(iter(reports.values()))["benchmarks"]]
    if not any("pass_at_k_curve" in r["benchmarks"][b] for r in reports.values() for b in benchmarks):
        return None
    plt = pyplot()
    if plt is None:
        print(MISSING_MATPLOTLIB.format(path=path), file=sys.stderr)
        return None
    figure, axes = plt.subplots(1, len(benchmarks), figsize=(4 * len(benchmarks), 3.2), squeeze=False)
    for axis, benchmark in zip(axes[0], benchmarks, strict=True):
        for model, result in reports.items():
            curve = result["benchmarks"][benchmark].get("pass_at_k_curve")
            if not curve:
                continue
            ks = [int(k) for k in curve]
            axis.plot(ks, [curve[str(k)]["estimate"] for k in ks], marker="o", label=model)
            axis.fill_between(ks, [curve[str(k)]["low"] for k in ks], [curve[str(k)]["high"] for k in ks], alpha=0.2)
        axis.set_xscale("log", base=2)
        axis.set(title=benchmark, xlabel="k", ylabel="pass@k", ylim=(0, 1))
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)
