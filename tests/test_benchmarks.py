"""Benchmarks by name: every schema's fixture (tests/data/benchmarks/, in the Hub data set's columns) reads as
question / gold-answer rows whose gold math_correct accepts; unknown names and misfit columns are clear errors;
``zrl eval --benchmarks`` reports each benchmark and their average. Nothing downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zrl_plugins.apps.benchmarks import BENCHMARKS, SUITES, load_benchmark, selected
from zrl_plugins.framework.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "data" / "benchmarks"
GOLDS = {
    "gsm8k": ["7", "36", "1000"],
    "math500": ["\\frac{3}{4}", "5", "7"],
    "minerva": ["40", "81"],
    "olympiadbench": ["$8$", "$\\frac{1}{2}$", "1, 2"],
    "aime24": ["024", "009"],
    "amc23": ["10.0", "30.0"],
}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_each_schema_reads_as_questions_and_golds(name):
    rows = load_benchmark(name, str(FIXTURES / f"{name}.jsonl"))
    assert [r["answer"] for r in rows] == GOLDS[name]
    assert all(r["question"] and r["benchmark"] == name for r in rows)
    assert len(load_benchmark(name, str(FIXTURES / f"{name}.jsonl"), limit=1)) == 1


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_math_correct_accepts_each_gold_as_written_in_a_box(name):
    from zrl_plugins import load_component

    verifier = load_component("verifier", "math_correct", num_workers=0)
    rows = load_benchmark(name, str(FIXTURES / f"{name}.jsonl"))
    completions = [f"The answer is $\\boxed{{{r['answer'].strip('$')}}}$." for r in rows]
    scores = verifier(prompts=[""] * len(rows), completions=completions, answer=[r["answer"] for r in rows])
    assert scores == [1.0] * len(rows)


def test_names_suites_and_errors(tmp_path):
    assert [n for n, _ in selected(None, "simplerl_zoo")] == list(SUITES["simplerl_zoo"].benchmarks)
    assert selected("gsm8k,aime24=local.jsonl", None) == [("gsm8k", None), ("aime24", "local.jsonl")]
    with pytest.raises(ConfigError, match="unknown benchmark 'gsm8" + "k2'; benchmarks: gsm8k, math500"):
        selected("gsm8k2", None)
    with pytest.raises(ConfigError, match="unknown suite 'zoo'; suites: simplerl_zoo"):
        selected(None, "zoo")
    misfit = tmp_path / "misfit.jsonl"
    misfit.write_text(json.dumps({"prompt": "1+1", "solution": "2"}) + "\n")
    with pytest.raises(
        DataError, match=r"gsm8k from .*misfit.jsonl: no question column; expected one of \['question'\]"
    ):
        load_benchmark("gsm8k", str(misfit))


def test_zrl_eval_on_two_benchmarks(tiny_model_path, tmp_path):
    from zrl_plugins.apps.cli import main

    specs = ",".join(f"{name}={FIXTURES / name}.jsonl" for name in ("gsm8k", "amc23"))
    code = main(["eval", "--model", tiny_model_path, "--benchmarks", specs, "--max_new_tokens", "4", "--k", "2",
                 "--output", str(tmp_path)])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert sorted(report["benchmarks"]) == ["amc23", "gsm8k"] and report["verifier"] == "math_correct"
    assert report["benchmarks"]["gsm8k"]["n"] == 3 and report["benchmarks"]["amc23"]["n"] == 2
    average = (report["benchmarks"]["gsm8k"]["pass@2"] + report["benchmarks"]["amc23"]["pass@2"]) / 2
    assert report["average"]["pass@2"] == pytest.approx(average)
    low, high = report["average"]["pass@2_95ci"]  # resampled within each benchmark
    assert low <= report["average"]["pass@2"] <= high
    assert "| average |" in (tmp_path / "eval.md").read_text()


def _eval(*argv):
    from zrl_plugins.apps.cli import main

    return main(["eval", "--max_new_tokens", "4", *argv])


def test_two_models_side_by_side_with_the_paired_difference_and_passk_png(tiny_model_path, tmp_path):
    import shutil

    trained = tmp_path / "trained"
    shutil.copytree(tiny_model_path, trained)  # the same weights under another name: a difference of exactly 0
    specs = f"gsm8k={FIXTURES / 'gsm8k.jsonl'},math500={FIXTURES / 'math500.jsonl'}"
    out = tmp_path / "out"
    assert _eval("--model", tiny_model_path, "--model", str(trained), "--benchmarks", specs, "--k", "2",
                 "--output", str(out)) == 0  # fmt: skip
    report = json.loads((out / "eval.json").read_text())
    assert list(report["models"]) == [tiny_model_path, str(trained)]
    difference = report["paired_differences"][str(trained)]["gsm8k"]
    assert difference["minus"] == tiny_model_path and difference["difference"] == 0.0
    assert report["paired_differences"][str(trained)]["average"] == {
        "minus": tiny_model_path,
        "difference": 0.0,
        "95ci": [0.0, 0.0],
    }
    assert (out / "passk.png").stat().st_size > 10_000
    assert "Paired difference of greedy pass@1" in (out / "eval.md").read_text()


def test_a_killed_evaluation_resumes_and_a_finished_one_reports_without_generating(
    tiny_model_path, tmp_path, monkeypatch
):
    from zrl_plugins.apps.generation import TransformersGenerator

    calls = []
    generate = TransformersGenerator.__call__

    def counted(self, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return generate(self, prompts, *args, **kwargs)

    monkeypatch.setattr(TransformersGenerator, "__call__", counted)
    monkeypatch.setattr(TransformersGenerator, "chunk", 1)
    spec, out = f"gsm8k={FIXTURES / 'gsm8k.jsonl'}", tmp_path / "out"
    assert _eval("--model", tiny_model_path, "--benchmarks", spec, "--output", str(out)) == 0
    first = json.loads((out / "eval.json").read_text())
    lines = (out / "problems.jsonl").read_text().splitlines()
    assert len(lines) == 3 and calls == [1, 1, 1]
    # killed while writing the third problem: two whole lines and a cut one remain
    (out / "problems.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    calls.clear()
    assert _eval("--model", tiny_model_path, "--benchmarks", spec, "--output", str(out)) == 0
    assert calls == [1]  # only the problem that was not scored
    assert json.loads((out / "eval.json").read_text())["benchmarks"] == first["benchmarks"]
    calls.clear()
    assert _eval("--model", tiny_model_path, "--benchmarks", spec, "--output", str(out)) == 0
    assert calls == []  # everything cached: re-reported without generating


def test_a_recipe_evaluates_during_training(tmp_path):
    """eval_every + eval_benchmarks: the held-out accuracy and a benchmark at the start, every 2 steps and at the
    end, in the log history (and so in training.png) and in summary.json."""
    from tests.test_recipes import TINY_OVERRIDES
    from zrl_plugins.apps.recipe import run

    flags = ["--max_steps", "4", "--eval_every", "2", "--eval_benchmarks", f"gsm8k={FIXTURES / 'gsm8k.jsonl'}",
             "--eval_benchmarks_k", "2"]  # fmt: skip
    summary = run("dr_grpo", ["--preset", "cpu-demo", *TINY_OVERRIDES, *flags, "--output_dir", str(tmp_path)])
    logged = {h["step"]: h for h in summary["log_history"] if "loss" in h}
    assert "eval/held_out/accuracy" in logged[2] and "eval/gsm8k/pass@1" in logged[2]
    for key in ("avg@2", "pass@2", "mean_length", "truncation_rate"):  # from 2 samples per problem, and greedy
        assert 0.0 <= logged[2][f"eval/gsm8k/{key}"] <= (1.0 if "@" in key or "rate" in key else 1e4)
    assert "eval/held_out/accuracy" in logged[4] and "eval/held_out/accuracy" not in logged[3]
    assert logged[4]["eval/held_out/accuracy"] == summary["accuracy_after"]
    written = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(written["evaluations"], key=int) == ["0", "2", "4"]
    # `zrl eval` of this run's model prompts with the template it was trained with
    from zrl_plugins.apps.cli import trained_template

    name, kwargs = trained_template(str(tmp_path))
    assert name == written["template"] == "plain" and kwargs["chat"] is False  # the random model: no chat template
    assert 0.0 <= written["evaluations"]["4"]["eval/gsm8k/pass@1"] <= 1.0


class CannedGenerator:
    """A generator (the protocol of zrl_plugins.apps.generation) that answers from a table: each problem's greedy
    completion and samples, whatever the model."""

    name = "canned"
    chunk = 2
    per_problem_seeds = True  # like vLLM: a problem's samples do not depend on the others in its chunk

    def __init__(self, greedy, samples):
        self.greedy, self.samples, self.calls = greedy, samples, []

    def __call__(self, prompts, indices, *, max_new_tokens, k, temperature, seed):
        from zrl_plugins.apps.generation import Completion

        self.calls.append(list(indices))
        greedy = [Completion(self.greedy[i], 5, False) for i in indices]
        return greedy, [[Completion(t, 5, False) for t in self.samples[i][:k]] for i in indices]


def test_maj_at_k_votes_over_equivalent_answers_by_hand(tmp_path):
    """math_correct extracts the samples' answers and merges equivalent ones (0.5 = 1/2 = \\frac12); maj@k is the
    majority answer of the first k samples, a tie going to the answer given first. By hand: problem 0 (gold 1/2)
    answers 3, 0.5, 1/2, \\frac12: wrong at k = 1 and 2 (a tie, 3 first), right at 4 (3 votes to 1; unmerged, the
    four would tie and 3 would win). Problem 1 (gold 7) answers 7, 7, 8, 8.0: right at 1, 2 and 4 (a 2–2 tie, 7
    first)."""
    from zrl_plugins import load_component
    from zrl_plugins.apps import eval_suite

    rows = [{"prompt": "p0", "answer": "\\frac{1}{2}"}, {"prompt": "p1", "answer": "7"}]
    box = "The answer is $\\boxed{{{}}}$.".format
    samples = [[box(a) for a in ("3", "0.5", "1/2", "\\frac12")], [box(a) for a in ("7", "7", "8", "8.0")]]
    generate = CannedGenerator([box("1/2"), box("9")], samples)
    verifier = load_component("verifier", "math_correct", num_workers=0)
    records = eval_suite.evaluate_problems(
        generate, rows, verifier, cache=eval_suite.ProblemCache(None), model_name="m", benchmark="b", k=4
    )
    assert records[0]["votes"] == [0, 1, 1, 1] and records[1]["votes"] == [0, 0, 1, 1]
    metrics = eval_suite.summary(records)
    assert metrics["pass@1"] == 0.5  # greedy: 1/2 right, 9 wrong
    assert (metrics["maj@1"], metrics["maj@2"], metrics["maj@4"]) == (0.5, 0.5, 1.0)
    assert metrics["avg@4"] == pytest.approx((3 / 4 + 2 / 4) / 2)


def test_a_cache_made_with_other_settings_is_refused(tmp_path):
    from zrl_plugins.apps import eval_suite

    path = tmp_path / "problems.jsonl"
    cache = eval_suite.ProblemCache(path, {"k": 4, "seed": 0})
    cache.add([{"model": "m", "benchmark": "b", "index": 0, "score": 1.0}])
    assert eval_suite.ProblemCache(path, {"k": 4, "seed": 0}).get("m", "b", 0)["score"] == 1.0
    with pytest.raises(ConfigError, match=r"other settings \(k: 4 then, 8 now\).*another --output"):
        eval_suite.ProblemCache(path, {"k": 8, "seed": 0})


def test_backend_vllm_without_vllm_is_refused_before_any_model_loads(tmp_path, capsys):
    pytest.importorskip("transformers")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: the vLLM lane tests --backend vllm")
    assert _eval("--model", str(tmp_path / "absent"), "--backend", "vllm") == 2
    assert "--backend vllm needs vLLM" in capsys.readouterr().err


def test_last_number_answers_are_written_one_way():
    from zrl_plugins import load_component

    verifier = load_component("verifier", "last_number")
    assert verifier.answers(["so 3.0", "it is 3", "x = -2.50", "none"]) == ["3", "3", "-2.5", None]


def test_the_eval_template_comes_from_the_flag_then_training_then_the_suite(tmp_path):
    import argparse

    from zrl_plugins import load_component
    from zrl_plugins.apps.cli import eval_template

    suite = SUITES["simplerl_zoo"]
    assert suite.max_new_tokens == 16_000  # SimpleRL-Zoo's scripts: greedy, 16k new tokens

    def chosen(*models, template=None, kwargs=None, suite_name="simplerl_zoo"):
        args = argparse.Namespace(model=list(models), template=template, template_kwargs=kwargs, suite=suite_name)
        return eval_template(args, SUITES.get(suite_name))[:2]

    assert chosen("Qwen/Qwen2.5-7B") == ("chat_boxed", {"system": "You are a helpful assistant."})
    assert chosen("Qwen/Qwen2.5-7B", suite_name=None) == ("plain", {})
    assert chosen("m", template="simple", kwargs='{"chat": true}') == ("simple", {"chat": True})
    trained, other = tmp_path / "run", tmp_path / "other"
    (trained / "checkpoint-50").mkdir(parents=True)
    other.mkdir()
    (trained / "summary.json").write_text(json.dumps({"template": "qwen_math", "template_kwargs": {"chat": False}}))
    # a checkpoint of the run finds the run's summary one folder up; the base model is evaluated the same way
    checkpoint = str(trained / "checkpoint-50")
    assert chosen("Qwen/Qwen2.5-7B", checkpoint, suite_name=None) == ("qwen_math", {"chat": False})
    # a suite asked for by name is the paper's protocol: its prompt wins over the trained one
    assert chosen("Qwen/Qwen2.5-7B", checkpoint)[0] == "chat_boxed"
    (other / "summary.json").write_text(json.dumps({"template": "r1_think", "template_kwargs": {}}))
    with pytest.raises(ConfigError, match="trained with different templates.*choose one with --template"):
        chosen(str(trained), str(other), suite_name=None)
    # the suite's template is SimpleRL-Zoo's qwen-boxed prompt
    template = load_component("template", "chat_boxed", system="You are a helpful assistant.")
    assert template("What is 1+1?") == [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": "What is 1+1?\nPlease reason step by step, and put your final answer within \\boxed{}.",
        },
    ]


def test_zrl_eval_on_a_generated_task_uses_the_runs_held_out_split(tiny_model_path, tmp_path):
    """--n_train with --n and --seed give task_rows what a recipe run gives it, so the held-out word problems are the
    run's (zrl eval asked for no training problem before, which a generated task refused): the cached problems'
    fingerprints are those of the run's held-out rows, and another --n_train holds out other problems."""
    from zrl_plugins import load_component
    from zrl_plugins.apps.eval_suite import problem_fingerprint
    from zrl_plugins.apps.recipe import RecipeArguments, task_rows
    from zrl_plugins.apps.tasks import with_prompts

    template = load_component("template", "plain", chat=False)

    def evaluated(n_train):
        out = tmp_path / f"out{n_train}"
        assert _eval("--model", tiny_model_path, "--task", "word_problems", "--n", "3", "--n_train", str(n_train),
                     "--template_kwargs", '{"chat": false}', "--output", str(out)) == 0  # fmt: skip
        return [json.loads(line)["problem"] for line in (out / "problems.jsonl").read_text().splitlines()]

    def held_out(n_train):
        rows = task_rows(RecipeArguments(task="word_problems", n_train=n_train, n_eval=3), 0)[1]
        return [problem_fingerprint(row) for row in with_prompts(rows, template)]

    assert evaluated(10) == held_out(10)
    assert evaluated(50) == held_out(50) != held_out(10)


def test_sampled_evaluations_leave_the_training_rng_as_it_was(tiny_model_path):
    """Evaluations during training draw their samples from a forked RNG seeded by the step: the training run's
    random stream is the same after them (so a run with evaluations trains as one without), and the samples repeat.
    Without the fork the state moves (the control)."""
    import contextlib
    from types import SimpleNamespace

    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zrl_plugins import load_component
    from zrl_plugins.apps import held_out
    from zrl_plugins.apps.tasks import with_prompts

    template = load_component("template", "plain", chat=False)
    rows = with_prompts(load_benchmark("gsm8k", str(FIXTURES / "gsm8k.jsonl")), template)
    trainer = SimpleNamespace(
        accelerator=Accelerator(cpu=True),
        model_wrapped=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        processing_class=AutoTokenizer.from_pretrained(tiny_model_path),
    )
    verifier = load_component("verifier", "math_correct", num_workers=0)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = held_out.sharded_scores(trainer, rows, verifier, max_new_tokens=6, k=2, seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert [r["completion"] for r in first] == [
        r["completion"] for r in held_out.sharded_scores(trainer, rows, verifier, max_new_tokens=6, k=2, seed=4)
    ]
    original = torch.random.fork_rng
    try:
        torch.random.fork_rng = lambda **kwargs: contextlib.nullcontext()
        held_out.sharded_scores(trainer, rows, verifier, max_new_tokens=6, k=2, seed=4)
        assert not torch.equal(torch.get_rng_state(), state)
    finally:
        torch.random.fork_rng = original


def test_cached_results_belong_to_their_problem_and_model(tmp_path):
    """A cached result is reused only for the same problem (prompt and gold) and the same model files: a changed
    data file or a model retrained into the same folder is generated again."""
    from zrl_plugins import load_component
    from zrl_plugins.apps import eval_suite

    box = "The answer is $\\boxed{{{}}}$.".format
    rows = [{"prompt": "p0", "answer": "1"}, {"prompt": "p1", "answer": "2"}]
    verifier = load_component("verifier", "math_correct", num_workers=0)
    path = tmp_path / "problems.jsonl"

    def evaluate(rows, model_id="m1"):
        generate = CannedGenerator([box("1"), box("2")], [[], []])
        records = eval_suite.evaluate_problems(
            generate, rows, verifier, cache=eval_suite.ProblemCache(path), model_name="m", benchmark="b",
            model_id=model_id,
        )  # fmt: skip
        return [i for call in generate.calls for i in call], [r["score"] for r in records]

    assert evaluate(rows) == ([0, 1], [1.0, 1.0])
    assert evaluate(rows) == ([], [1.0, 1.0])  # cached
    changed = [rows[0], {"prompt": "p1", "answer": "3"}]  # the data file's second gold changed
    assert evaluate(changed) == ([1], [1.0, 0.0])
    assert evaluate(changed, model_id="m2") == ([0, 1], [1.0, 0.0])  # the model's files changed


def test_a_chunk_seeded_generator_regenerates_whole_chunks_on_resume(tmp_path):
    """transformers seeds a chunk, not a problem: a resume regenerates the chunk a lost problem belongs to, whole
    and with the same problems, so it draws what the unbroken run drew."""
    from zrl_plugins import load_component
    from zrl_plugins.apps import eval_suite

    class ChunkSeeded(CannedGenerator):
        per_problem_seeds = False

    rows = [{"prompt": f"p{i}", "answer": str(i)} for i in range(5)]
    verifier = load_component("verifier", "math_correct", num_workers=0)
    path = tmp_path / "problems.jsonl"
    generate = ChunkSeeded([f"$\\boxed{{{i}}}$" for i in range(5)], [[] for _ in range(5)])
    eval_suite.evaluate_problems(generate, rows, verifier, cache=eval_suite.ProblemCache(path), model_name="m",
                                 benchmark="b")  # fmt: skip
    assert generate.calls == [[0, 1], [2, 3], [4]]  # fixed chunks of 2
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + lines[3:]) + "\n")  # problem 2 lost
    generate.calls.clear()
    eval_suite.evaluate_problems(generate, rows, verifier, cache=eval_suite.ProblemCache(path), model_name="m",
                                 benchmark="b")  # fmt: skip
    assert generate.calls == [[2, 3]]


def test_problem_fingerprints_are_stable_or_refused():
    from zrl_plugins.apps.eval_suite import problem_fingerprint
    from zrl_plugins.framework.errors import DataError

    assert problem_fingerprint({"prompt": "p", "numbers": {3, 1, 2}}) == problem_fingerprint(
        {"numbers": {2, 3, 1}, "prompt": "p"}
    )
    assert problem_fingerprint({"prompt": "p", "answer": "1"}) != problem_fingerprint({"prompt": "p", "answer": "2"})
    with pytest.raises(DataError, match="holds a object, which zrl eval cannot fingerprint"):
        problem_fingerprint({"prompt": "p", "extra": object()})


def test_generation_stops_at_the_models_window(tiny_model_path):
    """A budget past the positions the model has is cut at its window, and the cut counts as truncated."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zrl_plugins.apps.evaluation import generate_completions

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    prompt = "What is 1 + 1?"
    width = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    model.config.max_position_embeddings = width + 3
    model.generation_config.eos_token_id = None
    tokenizer.eos_token_id = None  # no stop token at all: only the window ends the completion
    stats: list[tuple[int, bool]] = []
    generate_completions(model, tokenizer, [prompt], max_new_tokens=20, stats=stats)
    assert stats == [(3, True)]
