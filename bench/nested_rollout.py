"""Rollout speed of ``nested`` (layers skipped) against the full model, side by side in one run.

Every completion is generated to the same length (min_new_tokens), so tokens/s compares the models, not sampling
luck. Skip ratios s ∈ {0.125, 0.25, 0.5}; the ideal speed-up of the decoder stack is 1/(1−s) (embedding, head and
sampling do not shrink). Rounds alternate the order of the variants.

    python -m bench.nested_rollout                      # SmolLM2-135M on the CPU
    python -m bench.nested_rollout --model medium --device cuda
"""

from __future__ import annotations

import argparse
import random
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "medium"], default="smollm2")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new_tokens", type=int, default=32)
    args = parser.parse_args()

    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from zrl_rollouts.nested import random_layers, skipped_layers

    from bench.common import write_results
    from zrl_plugins.apps.models import resolve_model

    path = resolve_model(args.model, tempfile.mkdtemp())
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prompts = [f"What is {a} + {a + 7}? Think step by step." for a in range(args.batch)]
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(args.device)
    num_layers = model.config.num_hidden_layers
    variants = {0.0: []} | {s: random_layers(num_layers, s, random.Random(0)) for s in (0.125, 0.25, 0.5)}
    times: dict[float, list[float]] = {s: [] for s in variants}

    def generate(skip):
        with skipped_layers(model, skip), torch.no_grad():
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(
                **batch,
                do_sample=True,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
            if args.device == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

    generate([])  # warm-up
    for round_index in range(args.rounds):
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for s in order:
            times[s].append(generate(variants[s]))
    tokens = args.batch * args.new_tokens
    base = statistics.median(times[0.0])
    rows = []
    for s, skip in variants.items():
        if s == 0.0:
            continue
        speedup = base / statistics.median(times[s])
        rows.append({"skip_ratio": s, "skipped_layers": skip, "speedup": speedup, "ideal": 1 / (1 - s)})
        print(f"s={s}: {len(skip)}/{num_layers} layers skipped, speed-up {speedup:.3f} (ideal {1 / (1 - s):.3f})")
    payload = {
        "benchmark": "nested rollout tokens/s relative to the full model",
        "model": args.model,
        "device": args.device,
        "tokens_per_generation": tokens,
        "rounds": args.rounds,
        "results": rows,
        "seconds": {str(k): v for k, v in times.items()},
    }
    table = "| model | s | layers skipped | tokens/s vs full | ideal 1/(1−s) |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {args.model} ({args.device}) | {r['skip_ratio']} | {len(r['skipped_layers'])}/{num_layers} | "
        f"{r['speedup']:.2f} | {r['ideal']:.2f} |"
        for r in rows
    )
    suffix = "" if args.device == "cpu" else f"_{args.device}"
    write_results(f"nested_rollout_{args.model}{suffix}", payload, table)


if __name__ == "__main__":
    main()
