"""``zrl eval --benchmarks`` / ``--suite`` / several ``--model``: every benchmark evaluated per problem, in chunks
whose results go to ``<output>/problems.jsonl`` as they are scored — a killed evaluation resumes where it stopped and
a finished one re-reports without generating — then reported as ``zrl eval`` reports a task (pass@1 with its
interval, the pass@k curve and avg@k from samples, lengths, truncation), with the macro average over benchmarks as
zero-RL papers' tables give it, and, for several models, the paired difference to the first one per benchmark and
their pass@k curves in one figure (``passk.png``)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..framework.errors import ConfigError, DataError
from .eval_metrics import (
    bootstrap_interval,
    default_ks,
    majority_correct,
    paired_difference,
    pass_at_k,
    pass_at_k_curve,
    stratified_interval,
    vote_keys,
)
from .evaluation import is_correct, prompts_and_columns, summarize_scores
from .generation import Generator
from .monitor import BEHAVIOUR_RULES, behaviours


class ProblemCache:
    """Scored problems, one JSON line each, keyed by (model, benchmark, problem index); ``None``: keep nothing.

    ``settings`` (what the scores depend on besides the model: samples, budget, temperature, seed, template,
    verifier, backend) are kept beside it (``problems.settings.json``); a cache made with other settings is refused,
    since mixing them would report numbers no single evaluation produced."""

    def __init__(self, path: str | Path | None, settings: Mapping[str, Any] | None = None):
        self.path = Path(path) if path is not None else None
        self.records: dict[tuple[str, str, int], dict[str, Any]] = {}
        if self.path is not None and settings is not None:
            self._check_settings(json.loads(json.dumps(dict(settings))))
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

    def _check_settings(self, settings: dict[str, Any]) -> None:
        assert self.path is not None
        kept = self.path.with_name(self.path.stem + ".settings.json")
        if kept.exists() and self.path.exists():
            before = json.loads(kept.read_text())
            if before != settings:
                changed = sorted(k for k in {*before, *settings} if before.get(k) != settings.get(k))
                raise ConfigError(
                    f"{self.path} holds results evaluated with other settings ("
                    + ", ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
                    + "); give another --output, or the same settings to resume"
                )
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(settings, indent=2))

    def get(self, model: str, benchmark: str, index: int, **identity: str) -> dict[str, Any] | None:
        """The record of problem ``index``, if it was scored for the same problem and model (``identity``: the
        fingerprints it was stored with, e.g. ``problem=`` and ``model_id=``); ``None`` otherwise."""
        record = self.records.get((model, benchmark, index))
        if record is None or any(record.get(key) != value for key, value in identity.items()):
            return None
        return record

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        for record in records:
            self.records[(record["model"], record["benchmark"], record["index"])] = record
        if self.path is not None:
            with self.path.open("a") as f:
                f.writelines(json.dumps(record) + "\n" for record in records)


def problem_fingerprint(row: dict[str, Any]) -> str:
    """What identifies a problem in the cache: its prompt and every other column (the gold answer, ...)."""
    return hashlib.sha256(json.dumps(row, sort_keys=True, default=_canonical).encode()).hexdigest()[:16]


def _canonical(value: Any) -> Any:
    """JSON for the values rows may hold besides JSON's own (sets, tuples are lists already); anything else would
    hash differently from run to run (an address in its repr), so it is refused by name."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    raise DataError(f"a problem's column holds a {type(value).__name__}, which zrl eval cannot fingerprint")


def evaluate_problems(
    generate: Generator,
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
    model_id: str = "",
) -> list[dict[str, Any]]:
    """Each problem's greedy score, length and truncation, its ``k`` sample scores and (where the verifier extracts
    answers) the majority-vote keys of its samples, from the cache where it holds this problem for this model
    (``model_id``: the model files' fingerprint); the rest generated by ``generate`` in its chunks, cached as each
    chunk is scored, with a progress line and an ETA.

    A generator whose seeds belong to a chunk (transformers) gets fixed chunks (problems ``0..c-1``, ``c..2c-1``, …)
    and regenerates a chunk whole when any of its problems is missing, so a resume draws what an unbroken run draws;
    one that seeds every problem (vLLM, ``per_problem_seeds``) gets only the missing problems."""
    fingerprints = [problem_fingerprint(row) for row in rows]

    def cached(i: int) -> dict[str, Any] | None:
        return cache.get(model_name, benchmark, i, problem=fingerprints[i], model_id=model_id)

    missing = [i for i in range(len(rows)) if cached(i) is None]
    if getattr(generate, "per_problem_seeds", False):
        chunks = [missing[start : start + generate.chunk] for start in range(0, len(missing), generate.chunk)]
    else:
        starts = sorted({i - i % generate.chunk for i in missing})
        chunks = [list(range(start, min(start + generate.chunk, len(rows)))) for start in starts]
    answers = getattr(verifier, "answers", None)
    equivalent = getattr(verifier, "equivalent", None)
    started, done, todo = time.monotonic(), 0, sum(map(len, chunks))
    for chunk in chunks:
        prompts, columns = prompts_and_columns([rows[i] for i in chunk])
        greedy, samples = generate(
            prompts, chunk, max_new_tokens=max_new_tokens, k=k, temperature=temperature, seed=seed
        )
        scores = verifier(prompts=prompts, completions=[c.text for c in greedy], **columns)
        # all samples scored in one call: sample s of problem j at position j * k + s
        flat = [c.text for row in samples for c in row]
        sample_scores: list[float | None] = []
        if k:
            repeated = {key: [v for v in values for _ in range(k)] for key, values in columns.items()}
            sample_scores = verifier(prompts=[p for p in prompts for _ in range(k)], completions=flat, **repeated)
        votes: list[list[int | None]] | None = None
        if k and callable(answers):
            extracted = list(answers(flat))
            votes = vote_keys([extracted[j * k : (j + 1) * k] for j in range(len(chunk))], equivalent)
        cache.add(
            [
                {
                    "model": model_name,
                    "benchmark": benchmark,
                    "index": i,
                    "problem": fingerprints[i],
                    "model_id": model_id,
                    "score": scores[j],
                    "length": greedy[j].tokens,
                    "truncated": greedy[j].truncated,
                    "samples": sample_scores[j * k : (j + 1) * k],
                    **({"votes": votes[j]} if votes is not None else {}),
                    "completion": greedy[j].text,
                }
                for j, i in enumerate(chunk)
            ]
        )
        done += len(chunk)
        rate = (time.monotonic() - started) / done
        print(
            f"{model_name} / {benchmark}: {len(rows) - todo + done}/{len(rows)} problems, "
            f"ETA {rate * (todo - done):.0f} s",
            file=sys.stderr,
            flush=True,
        )
    return [cached(i) for i in range(len(rows))]


def summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``zrl eval``'s metrics of a benchmark's per-problem records."""
    sampled = [r["samples"] for r in records] if records and records[0]["samples"] else None
    metrics = summarize_scores(
        [r["score"] for r in records], [r["length"] for r in records], [r["truncated"] for r in records], sampled
    )
    if sampled:
        correct = [[is_correct(s) for s in row] for row in sampled]
        curve = pass_at_k_curve(correct)
        metrics["pass_at_k_curve"] = {str(size): point for size, point in curve.items()}
        for key, solved in per_problem(records).items():  # maj@k from the first k samples, k as in the curve
            if key.startswith("maj@"):
                metrics[key] = sum(solved) / len(solved)
                metrics[f"{key}_95ci"] = list(bootstrap_interval(solved))
    shown = [behaviours(r.get("completion", "")) for r in records]
    for name in BEHAVIOUR_RULES:  # the reasoning behaviours of the greedy answers, by the monitor's rules
        metrics[f"behaviour/{name}"] = sum(s[name] for s in shown) / max(len(shown), 1)
    return metrics


def per_problem(records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Each metric's per-problem values, whose mean is the benchmark's metric: greedy ``pass@1``; from ``n``
    samples ``avg@n``, the pass@k estimators (``pass@1_sampled``, ``pass@2``, …) and ``maj@k``."""
    values = {"pass@1": [float(is_correct(r["score"])) for r in records]}
    if records and records[0]["samples"]:
        correct = [[is_correct(s) for s in r["samples"]] for r in records]
        n = len(correct[0])
        values[f"avg@{n}"] = [sum(row) / n for row in correct]
        for size in default_ks(n):
            name = f"pass@{size}" if size > 1 else "pass@1_sampled"
            values[name] = [pass_at_k(n, sum(row), size) for row in correct]
            if all("votes" in r for r in records):
                values[f"maj@{size}"] = [
                    float(majority_correct(r["votes"], row, size)) for r, row in zip(records, correct, strict=True)
                ]
    return values


def report(per_benchmark: Mapping[str, Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """``{"benchmarks": {name: metrics}, "average": {metric: macro mean, metric_95ci: interval}}`` of one model;
    the average's interval resamples every benchmark's problems within it (:func:`stratified_interval`)."""
    results = {name: summary(records) for name, records in per_benchmark.items()}
    values = {name: per_problem(records) for name, records in per_benchmark.items()}
    shared = set.intersection(*(set(v) for v in values.values())) if values else set()
    average: dict[str, Any] = {}
    for key in sorted(shared, key=lambda k: (k.split("@")[0], _k_of(k))):
        groups = [values[name][key] for name in values]
        average[key] = sum(sum(g) / len(g) for g in groups) / len(groups)
        average[f"{key}_95ci"] = list(stratified_interval(groups))
    return {"benchmarks": results, "average": average}


def _k_of(key: str) -> int:
    digits = "".join(ch for ch in key.split("@", 1)[1] if ch.isdigit())
    return int(digits) if digits else 0


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
        if len(per_model[other]) > 1:  # the macro average of the differences, benchmarks resampled within
            groups = [
                [float(is_correct(y["score"])) - float(is_correct(x["score"])) for x, y in zip(
                    per_model[base][benchmark], records, strict=True)]
                for benchmark, records in per_model[other].items()
            ]  # fmt: skip
            mean = sum(sum(g) / len(g) for g in groups) / len(groups)
            differences[other]["average"] = {
                "minus": base,
                "difference": mean,
                "95ci": list(stratified_interval(groups)),
            }
    return differences


def table(reports: Mapping[str, Mapping[str, Any]], differences: Mapping[str, Any] | None = None) -> str:
    """A Markdown table: per benchmark (and the average), each model's pass@1 with its interval and the metrics
    from samples; for several models, the paired difference to the first."""
    lines = []
    for model, result in reports.items():
        metrics = [k for k in result["average"] if k != "pass@1" and not k.endswith("_95ci")]
        header = ["model", "benchmark", "n", "pass@1 (95 % CI)", *metrics]
        if not lines:
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, m in result["benchmarks"].items():
            low, high = m.get("pass@1_95ci", (m["pass@1"], m["pass@1"]))
            pass1 = f"{m['pass@1']:.3f} ({low:.3f}–{high:.3f})"
            lines.append("| " + " | ".join([model, name, str(m["n"]), pass1, *(f"{m[k]:.3f}" for k in metrics)]) + " |")
        average = result["average"]
        low, high = average["pass@1_95ci"]
        pass1 = f"{average['pass@1']:.3f} ({low:.3f}–{high:.3f})"
        cells = [model, "average", "", pass1, *(f"{average[k]:.3f}" for k in metrics)]
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
