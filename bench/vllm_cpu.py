"""vLLM's CPU build against transformers, and what the rollout–training mismatch looks like, on SmolLM2-135M.

    bash scripts/setup_vllm.sh && .venv-vllm/bin/python -m bench.vllm_cpu            # everything, ~25 min
    .venv-vllm/bin/python -m bench.vllm_cpu --skip_demo --grpo_steps 6              # ~8 min

Four measurements, each arm in a process of its own (vLLM sets up torch.distributed for its colocated engine), the
arms of one measurement one after the other in the same run:

1. Generation throughput: 32 prompts x 64 sampled tokens (EOS ignored, so every arm writes the same number of
   tokens), temperature 1: vLLM bf16 (``enforce_eager``) vs transformers ``generate`` in bf16 and in fp32; best of
   3 batches after a warm-up batch. vLLM's engine start is reported apart.
2. GRPO step time with and without vLLM colocate: the demo's settings (4 prompts x 4 completions, lr 2e-5, bf16
   autocast, fp32 weights) with 64-token completions; median over the steps after the first.
3. Mismatch: the (π_old, π_vLLM, mask) tensors of every step of the vLLM arm of 2 are kept, and every
   ``rollout_correction`` component installed is applied to the same tensors: token KL(vLLM ‖ π_old), ESS/N of the
   sequence weights, fraction of tokens masked, min / max of the weights it returns.
4. The demo (``python -m zrl_plugins.demo``) with and without ``--use_vllm``: held-out greedy accuracy before and
   after with 95 % Wilson intervals, and wall time.

Writes ``bench/results/vllm_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = ROOT / "bench" / "results" / "vllm_cpu.json"
PROMPTS = 32
NEW_TOKENS = 64


def _prompts(tokenizer: Any) -> list[list[int]]:
    texts = [f"What is {a} + {2 * a + 1}? Explain step by step." for a in range(PROMPTS)]
    chats = [[{"role": "user", "content": t}] for t in texts]
    return [
        list(tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=True)["input_ids"]) for c in chats
    ]


def arm_generate_hf(dtype: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zrl_plugins.apps.models import smollm2_path

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, {"bf16": "bfloat16"}.get(dtype, "float32")))
    prompts = _prompts(tokenizer)
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    kwargs = dict(
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        pad_token_id=pad,
    )
    times = []
    with torch.inference_mode():
        model.generate(ids[:4], attention_mask=attention[:4], **{**kwargs, "max_new_tokens": 8, "min_new_tokens": 8})
        for _ in range(3):
            start = time.perf_counter()
            out = model.generate(ids, attention_mask=attention, **kwargs)
            times.append(time.perf_counter() - start)
    tokens = (out.shape[1] - width) * PROMPTS
    return {
        "arm": f"transformers {dtype}",
        "tokens": tokens,
        "seconds": min(times),
        "tokens_per_s": tokens / min(times),
    }


def arm_generate_vllm() -> dict[str, Any]:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from zrl_plugins.apps.models import smollm2_path

    path = smollm2_path()
    prompts = _prompts(AutoTokenizer.from_pretrained(path))
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29651")
    start = time.perf_counter()
    llm = LLM(
        model=path,
        dtype="bfloat16",
        enforce_eager=True,
        distributed_executor_backend="external_launcher",
        seed=0,
        max_model_len=512,
        max_num_seqs=PROMPTS,
    )
    startup = time.perf_counter() - start
    params = SamplingParams(temperature=1.0, max_tokens=NEW_TOKENS, ignore_eos=True, seed=0)
    inputs = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(inputs[:4], SamplingParams(max_tokens=8, ignore_eos=True), use_tqdm=False)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        outputs = llm.generate(inputs, params, use_tqdm=False)
        times.append(time.perf_counter() - start)
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {
        "arm": "vLLM bf16 (enforce_eager)",
        "tokens": tokens,
        "seconds": min(times),
        "tokens_per_s": tokens / min(times),
        "engine_start_s": startup,
    }


def demo_rows() -> list[dict[str, Any]]:
    """The demo's kind of problem, 441 of them (the GRPO arms here and in bench.async_cpu)."""
    from zrl_plugins.apps.demo import SYSTEM_PROMPT

    return [
        {
            "prompt": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"What is {a} + {b}?"},
            ],
            "answer": str(a + b),
        }
        for a in range(21)
        for b in range(21)
    ]


def grpo_config(steps: int, **overrides: Any) -> Any:
    """The demo's GRPO settings with 64-token completions (4 prompts x 4 completions, lr 2e-5, bf16 autocast where
    native, fp32 weights)."""
    from zrl_plugins import ZRLConfig
    from zrl_plugins.apps.devices import cpu_supports_bf16

    settings: dict[str, Any] = dict(
        output_dir=tempfile.mkdtemp(),
        verifiers=["last_number"],
        kl_penalty="none",
        beta=0.0,
        learning_rate=2e-5,
        lr_scheduler_type="constant",
        per_device_train_batch_size=16,
        num_generations=4,
        max_completion_length=NEW_TOKENS,
        temperature=1.0,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=cpu_supports_bf16(),
        gradient_checkpointing=False,
        seed=0,
        model_init_kwargs={"dtype": "float32"},
        vllm_max_model_length=256,
        disable_tqdm=True,
    )
    return ZRLConfig(**{**settings, **overrides})


def capture_mismatch(trainer: Any) -> list[dict[str, Any]]:
    """Keep the (π_old, behaviour, mask) tensors of every rollout batch ``trainer`` scores (filled as it trains)."""
    captured: list[dict[str, Any]] = []
    score = trainer._generate_and_score_completions

    def keep(inputs):
        output = score(inputs)
        if "sampling_per_token_logps" in output and "old_per_token_logps" in output:
            keys = ("old_per_token_logps", "sampling_per_token_logps", "completion_mask")
            captured.append({k: output[k].detach().cpu() for k in keys})
        return output

    trainer._generate_and_score_completions = keep
    return captured


def arm_grpo(use_vllm: bool, steps: int, capture: str | None) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from bench.common import StepTimer
    from zrl_plugins import ZRLGRPOTrainer
    from zrl_plugins.apps.models import smollm2_path

    path = smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    rows = demo_rows()
    config = grpo_config(steps, use_vllm=use_vllm, vllm_mode="colocate")
    trainer = ZRLGRPOTrainer(
        path, args=config, train_dataset=Dataset.from_list(rows).shuffle(seed=0), processing_class=tokenizer
    )
    timer = StepTimer()
    trainer.add_callback(timer)
    captured = capture_mismatch(trainer) if capture else []
    trainer.train()
    if capture:
        torch.save(captured, capture)
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {
        "arm": "vLLM colocate" if use_vllm else "transformers generate",
        "step_times": timer.times,
        "median_step_s": statistics.median(timer.times[1:] or timer.times),
        "rewards": rewards,
    }


def mismatch(captured_path: str, names: list[str] | None = None, skip: int = 0) -> list[dict[str, Any]]:
    """Every installed rollout correction (or ``names``) on the captured (π_old, π_vLLM, mask) tensors of each step
    after the first ``skip``, through the trainer's own checks and statistics."""
    import torch

    from zrl_plugins.framework.plugins import get_plugin_manager
    from zrl_plugins.framework.rollout_correction import checked_correction, mismatch_stats

    steps = torch.load(captured_path, weights_only=True)
    pm = get_plugin_manager()
    keys = {
        "behaviour_kl": "rollout/behaviour_kl",
        "ess": "rollout/ess",
        "masked_fraction": "rollout/masked_fraction",
        "weight_min": "sampling/importance_sampling_ratio/min",
        "weight_max": "sampling/importance_sampling_ratio/max",
    }
    rows = []
    for name in names or pm.names("rollout_correction"):
        correction = pm.load_component("rollout_correction", name)
        per_step = []
        for step in steps[skip:]:
            old, behaviour = step["old_per_token_logps"], step["sampling_per_token_logps"]
            mask = step["completion_mask"].float()
            weights, rejection = checked_correction(name, correction(old, behaviour, mask), old, mask)
            per_step.append(mismatch_stats(old, behaviour, mask, weights, rejection))
        rows.append({"correction": name, **{k: statistics.mean(s[v] for s in per_step) for k, v in keys.items()}})
    return rows


def arm_demo(use_vllm: bool, out: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "zrl_plugins.demo",
        "--output_dir",
        str(out),
        *(["--use_vllm"] if use_vllm else []),
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    summary = json.loads((out / "summary.json").read_text())
    keys = (
        "accuracy_before",
        "accuracy_after",
        "accuracy_before_interval",
        "accuracy_after_interval",
        "seconds_per_step",
        "wall_minutes",
    )
    return {
        "arm": "demo --use_vllm" if use_vllm else "demo",
        "job_minutes": (time.perf_counter() - start) / 60,
        **{k: summary[k] for k in keys},
    }


def _in_process(arm: str, *args: str) -> Any:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    subprocess.run(
        [sys.executable, "-m", "bench.vllm_cpu", "--arm", arm, "--out", out, *args], check=True, cwd=ROOT, env=env
    )
    return json.loads(Path(out).read_text())


def table(results: dict[str, Any]) -> str:
    lines: list[str] = []
    if results.get("generation"):
        lines += _generation_table(results)
    if results.get("grpo"):
        lines += _grpo_table(results)
    if results.get("demo"):
        lines += _demo_table(results)
    return "\n".join(lines)


def _generation_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Generation: 32 prompts x 64 sampled tokens, SmolLM2-135M-Instruct",
        "",
        "| arm | tokens/s | ratio to transformers fp32 |",
        "|---|---|---|",
    ]
    base = next(r["tokens_per_s"] for r in results["generation"] if r["arm"] == "transformers fp32")
    for r in results["generation"]:
        lines.append(f"| {r['arm']} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f} |")
    start = next(r for r in results["generation"] if "engine_start_s" in r)["engine_start_s"]
    return [*lines, "", f"vLLM engine start (enforce_eager): {start:.1f} s", ""]


def _grpo_table(results: dict[str, Any]) -> list[str]:
    grpo = results["grpo"]
    lines = [
        f"## GRPO step time ({results['grpo_steps']} steps, 4 prompts x 4 x 64 tokens)",
        "",
        "| generation | median step (s) | mean reward |",
        "|---|---|---|",
    ]
    for r in grpo:
        lines.append(f"| {r['arm']} | {r['median_step_s']:.2f} | {statistics.mean(r['rewards']):.3f} |")
    lines.append(f"\nvLLM colocate / transformers step time: {grpo[1]['median_step_s'] / grpo[0]['median_step_s']:.2f}")
    lines += [
        "",
        "## Mismatch vLLM bf16 vs trainer fp32 (bf16 autocast), mean over the steps",
        "",
        "| correction | token KL(vLLM ‖ π_old) | ESS/N | masked | weight min | weight max |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["mismatch"]:
        kl = r.get("behaviour_kl", float("nan"))
        ess = r.get("ess", float("nan"))
        lines.append(
            f"| {r['correction']} | {kl:.4f} | {ess:.3f} | {r['masked_fraction']:.3f} | "
            f"{r['weight_min']:.3f} | {r['weight_max']:.3f} |"
        )
    return [*lines, ""]


def _demo_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "## The demo with and without vLLM (200 held-out problems, 45 steps)",
        "",
        "| arm | before (95 % CI) | after (95 % CI) | s/step | job min |",
        "|---|---|---|---|---|",
    ]
    for r in results["demo"]:
        b, a = r["accuracy_before_interval"], r["accuracy_after_interval"]
        lines.append(
            f"| {r['arm']} | {r['accuracy_before']:.3f} ({b[0]:.3f}–{b[1]:.3f}) | "
            f"{r['accuracy_after']:.3f} ({a[0]:.3f}–{a[1]:.3f}) | {r['seconds_per_step']:.2f} | "
            f"{r['job_minutes']:.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--capture", help=argparse.SUPPRESS)
    parser.add_argument("--grpo_steps", type=int, default=8)
    parser.add_argument("--skip_demo", action="store_true")
    parser.add_argument(
        "--parts",
        default="generation,grpo,demo",
        help="comma-separated subset of generation, grpo (with mismatch), demo",
    )
    parser.add_argument(
        "--merge", action="store_true", help="keep the parts of bench/results/vllm_cpu.json that this run does not redo"
    )
    parser.add_argument("--note", default="", help="conditions of this run, kept with the parts it measured")
    args = parser.parse_args()
    if args.arm:
        arms = {
            "hf_bf16": lambda: arm_generate_hf("bf16"),
            "hf_fp32": lambda: arm_generate_hf("fp32"),
            "vllm": arm_generate_vllm,
            "grpo_hf": lambda: arm_grpo(False, args.grpo_steps, None),
            "grpo_vllm": lambda: arm_grpo(True, args.grpo_steps, args.capture),
        }
        Path(args.out).write_text(json.dumps(arms[args.arm]()))
        return
    from bench.common import write_results

    parts = set(args.parts.split(",")) - ({"demo"} if args.skip_demo else set())
    previous = RESULTS_FILE.read_text() if args.merge and RESULTS_FILE.exists() else "{}"
    results: dict[str, Any] = {k: v for k, v in json.loads(previous).items() if k != "machine"}
    results.setdefault("notes", {}).update({part: args.note for part in parts})
    if "generation" in parts:
        results["generation"] = [_in_process(arm) for arm in ("hf_fp32", "hf_bf16", "vllm")]
    if "grpo" in parts:
        capture = str(Path(tempfile.mkdtemp()) / "mismatch.pt")
        steps = ["--grpo_steps", str(args.grpo_steps)]
        results["grpo_steps"] = args.grpo_steps
        results["grpo"] = [_in_process("grpo_hf", *steps), _in_process("grpo_vllm", *steps, "--capture", capture)]
        results["mismatch"] = mismatch(capture)
    if "demo" in parts:
        work = Path(tempfile.mkdtemp())
        results["demo"] = [arm_demo(False, work / "demo"), arm_demo(True, work / "demo_vllm")]
    write_results("vllm_cpu", results, table(results))


if __name__ == "__main__":
    main()
