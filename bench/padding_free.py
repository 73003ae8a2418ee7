"""Padded vs padding-free vs padding-free + token budget: one training forward + backward of the same micro-batch.

Two batches on SmolLM2-135M-Instruct (the demo's chat prompts, its precision: bf16 autocast where the CPU computes
bf16 natively, else fp32):

* ``skewed``: 8 completions whose lengths spread log-uniformly from 8 to 512 tokens — the spread of a zero-RL step,
  where most answers are short and a few run to the limit;
* ``demo``: the demo's micro-batch, 4 prompts x 4 completions of up to 16 tokens (lengths 4..16).

Each (batch, variant) runs in a fresh process, so the peak RSS is its own; the variants of a batch run back to
back, in the order padded, padding-free, padding-free + budget, repeated ``--rounds`` times (the medians are
reported). Time is the loss forward + backward (``compute_loss`` + ``backward``, or the token-budget parts), after
one warm-up pass. The gradients of the three variants are compared too (relative difference of the gradient
norm), so a speed-up that changed the numbers would show.

    python -m bench.padding_free [--model smollm2|tiny] [--rounds 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, resource, sys, time
os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
import torch
from datasets import Dataset
from transformers import AutoTokenizer
from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
from zrl_plugins.apps.data import addition_splits
from zrl_plugins.apps.demo import SYSTEM_PROMPT
from zrl_plugins.apps.devices import cpu_supports_bf16
from zrl_plugins.trainers.packing import pad_fraction

model, batch_name, variant, out, repeats, chat, device, attn = sys.argv[1:9]
repeats, chat, cuda = int(repeats), chat == "chat", device == "cuda"
rows, _ = addition_splits(n_eval=10, chat=chat, system=SYSTEM_PROMPT if chat else None)
shapes = {  # completion lengths, micro-batch size, token budget
    "skewed": ([round(8 * (64 if chat else 32) ** (i / 7)) for i in range(8)], 1024),  # tiny: a 512-token context
    "demo": ([4 + (5 * i) % 13 for i in range(16)], 512),
}
lengths, budget = shapes[batch_name]
width = max(lengths)
bf16 = cuda or cpu_supports_bf16()
args = ZRLConfig(
    output_dir=out, per_device_train_batch_size=len(lengths), num_generations=4, max_completion_length=width,
    report_to=[], use_cpu=not cuda, bf16=bf16, save_strategy="no", gradient_checkpointing=False, disable_tqdm=True,
    model_init_kwargs={"dtype": "float32", **({"attn_implementation": attn} if attn != "default" else {})},
    beta=0.0, kl_penalty="none",
    padding_free=variant != "padded", max_tokens_per_microbatch=budget if variant == "padding_free+budget" else None,
)
tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
trainer = ZRLGRPOTrainer(model, lambda completions, **kw: [0.0] * len(completions), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
trainer.model.train()
trainer.current_gradient_accumulation_steps = 1
generator = torch.Generator().manual_seed(0)
prompts = [rows[i % len(rows)]["prompt"] for i in range(len(lengths))]
if chat:
    prompts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
completion_ids = torch.randint(10, min(1000, len(tokenizer)), (len(lengths), width), generator=generator)
completion_mask = (torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
device = trainer.accelerator.device
batch = {
    "prompt_ids": encoded["input_ids"], "prompt_mask": encoded["attention_mask"],
    "completion_ids": completion_ids, "completion_mask": completion_mask,
    "advantages": torch.randn(len(lengths), generator=generator),
    "num_items_in_batch": completion_mask.sum(),
}
batch = {k: v.to(device) for k, v in batch.items()}
completion_mask = batch["completion_mask"]
mask = torch.cat([batch["prompt_mask"], completion_mask], 1)

def step():
    trainer.model.zero_grad()
    if args.max_tokens_per_microbatch is None:
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
    else:
        trainer._backward_in_parts(trainer.model, batch, args.max_tokens_per_microbatch)

step()  # warm-up
times = []
for _ in range(repeats):
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize()
    times.append(time.perf_counter() - start)
grads = [p.grad.double() for p in trainer.model.parameters() if p.grad is not None]
grad_norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
parts = trainer._metrics["train"].get("microbatch_parts", [1.0])[-1]
print("RESULT", json.dumps({
    "batch": batch_name, "variant": variant, "bf16": bf16, "times_s": times,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    "real_tokens": int(mask.sum()), "padded_tokens": mask.numel(), "pad_fraction": pad_fraction(mask),
    "grad_norm": grad_norm, "parts": parts,
}))
"""

VARIANTS = ("padded", "padding_free", "padding_free+budget")


def run(model: str, batch: str, variant: str, workdir: str, repeats: int, chat: bool, device: str, attn: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, model, batch, variant, f"{workdir}/{batch}-{variant}", str(repeats),
         "chat" if chat else "plain", device, attn],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{batch}/{variant} failed:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--attn_implementation",
        default="default",
        help="the model's attention backend (default: transformers' choice, sdpa); on a GPU try sdpa, "
        "flash_attention_2, kernels-community/flash-attn3",
    )
    args = parser.parse_args()

    from bench.common import write_results
    from zrl_plugins.apps.models import resolve_model

    workdir = tempfile.mkdtemp(prefix="zrl-padding-free-")
    model = resolve_model(args.model, workdir)
    results: dict[str, dict[str, list[dict]]] = {}
    for batch in ("skewed", "demo"):
        for _ in range(args.rounds):
            for variant in VARIANTS:
                chat = args.model != "tiny"
                result = run(model, batch, variant, workdir, args.repeats, chat, args.device, args.attn_implementation)
                print(json.dumps(result), flush=True)
                results.setdefault(batch, {}).setdefault(variant, []).append(result)

    def memory(entry: dict) -> str:
        return f"{entry['peak_cuda_mib']:.0f}" if entry["peak_cuda_mib"] is not None else f"{entry['peak_rss_mib']:.0f}"

    rows, summary = [], {}
    for batch, variants in results.items():
        base_time = statistics.median(t for r in variants["padded"] for t in r["times_s"])
        base_norm = variants["padded"][0]["grad_norm"]
        for variant, runs in variants.items():
            seconds = statistics.median(t for r in runs for t in r["times_s"])
            first = runs[0]
            entry = {
                "pad_fraction": first["pad_fraction"],
                "real_tokens": first["real_tokens"],
                "padded_tokens": first["padded_tokens"],
                "parts": first["parts"],
                "seconds": seconds,
                "speedup_vs_padded": base_time / seconds,
                "real_tokens_per_s": first["real_tokens"] / seconds,
                "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
                "peak_cuda_mib": first["peak_cuda_mib"],
                "grad_norm_rel_diff": abs(first["grad_norm"] - base_norm) / base_norm,
            }
            summary.setdefault(batch, {})[variant] = entry
            rows.append(
                f"| {batch} | {variant} | {entry['pad_fraction']:.2f} | {entry['parts']:.0f} | {seconds:.2f} | "
                f"{entry['speedup_vs_padded']:.2f}x | {entry['real_tokens_per_s']:.0f} | {memory(entry)} | "
                f"{entry['grad_norm_rel_diff']:.1e} |"
            )
    precision = "bf16 autocast" if results["skewed"]["padded"][0]["bf16"] else "fp32"
    where = "CPU, peak RSS" if args.device == "cpu" else f"CUDA ({args.attn_implementation}), peak allocated"
    table = (
        f"Loss forward + backward of one micro-batch, {args.model}, {precision}, {where}; medians of "
        f"{args.rounds} processes x {args.repeats} passes per variant, variants alternated.\n\n"
        "| batch | variant | pad fraction (padded) | parts | s / pass | vs padded | real tokens/s | peak MiB "
        "| grad-norm rel. diff |\n|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    payload = {"benchmark": "padding-free loss forward + backward", "model": args.model, "precision": precision,
               "device": args.device, "attn_implementation": args.attn_implementation,
               "rounds": args.rounds, "repeats": args.repeats, "summary": summary, "runs": results}  # fmt: skip
    suffix = "" if args.device == "cpu" else f"_cuda_{args.attn_implementation.replace('/', '-')}"
    write_results(f"padding_free_{args.model}{suffix}", payload, table)


if __name__ == "__main__":
    main()
