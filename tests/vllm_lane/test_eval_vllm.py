"""``zrl eval`` generating with vLLM's CPU build: the same greedy completions, lengths and truncation as
transformers on the same prompts (fp32), samples seeded per problem, and the command end to end with resume.

Run by ``bash scripts/test_vllm.sh``; skipped where vLLM is not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vllm_lane.test_vllm_colocate import run

pytest.importorskip("vllm", reason="vLLM is not installed: run `bash scripts/test_vllm.sh`")
pytestmark = pytest.mark.vllm

FIXTURES = Path(__file__).parent.parent / "data" / "benchmarks"


def test_vllm_and_transformers_generate_alike(tmp_path):
    result = run("eval_generators", str(tmp_path), workdir=tmp_path)
    assert result["vllm_greedy"] == result["hf_greedy"]
    samples = result["samples"]
    assert [len(row) for row in samples] == [4] * 5
    assert len({text for row in samples for text, _, _ in row}) > 10, "samples should differ"
    # problem 2's samples do not depend on the problems generated with it: a resume draws what a full run draws
    assert result["alone"] == samples[2]
    assert result["long_samples"] == 48 * 4


def _zrl_eval(out: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    specs = f"gsm8k={FIXTURES / 'gsm8k.jsonl'},amc23={FIXTURES / 'amc23.jsonl'}"
    command = [sys.executable, "-m", "zrl_plugins.apps.cli", "eval", "--model", str(model), "--benchmarks", specs,
               "--k", "4", "--max_new_tokens", "8", "--precision", "fp32", "--output", str(out), *extra]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_zrl_eval_with_vllm_writes_the_report_and_resumes(tmp_path):
    from zrl_plugins.apps.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "model", hidden_size=64)
    out = tmp_path / "out"
    first = _zrl_eval(out, model)
    report = json.loads((out / "eval.json").read_text())
    assert report["backend"] == "vllm" and report["device"].startswith("vLLM on cpu")
    assert "vLLM on cpu" in first.stderr
    assert report["benchmarks"]["gsm8k"]["n"] == 3 and "pass@4" in report["benchmarks"]["amc23"]
    assert "maj@4" in report["benchmarks"]["gsm8k"]  # math_correct extracts answers: majority votes
    lines = (out / "problems.jsonl").read_text().splitlines()
    assert len(lines) == 5
    # the last problem lost: the resume generates it alone, with its own seed, so the report does not change
    (out / "problems.jsonl").write_text("\n".join(lines[:4]) + "\n")
    again = _zrl_eval(out, model)
    assert "amc23: 2/2 problems" in again.stderr and "gsm8k: 3/3" not in again.stderr
    assert json.loads((out / "eval.json").read_text())["benchmarks"] == report["benchmarks"]
    assert (out / "problems.jsonl").read_text().splitlines()[4] == lines[4]
    # another backend's results are not mixed in
    other = subprocess.run(
        [sys.executable, "-m", "zrl_plugins.apps.cli", "eval", "--model", str(model), "--benchmarks",
         f"gsm8k={FIXTURES / 'gsm8k.jsonl'}", "--backend", "transformers", "--k", "4", "--max_new_tokens", "8",
         "--precision", "fp32", "--output", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert other.returncode == 2 and "backend: 'vllm' then, 'transformers' now" in other.stderr
