"""Peak memory of a GRPO step with kl_penalty="none" (no reference model) vs "k3" (reference model loaded).

Each variant runs in a fresh process (peak RSS is per process): build the trainer on SmolLM2-135M, train 2 steps,
report ``ru_maxrss``.

    python -m bench.kl_memory [--model smollm2|tiny]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys
os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
from datasets import Dataset
from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
from zrl_plugins.apps.data import addition_splits
model, kl, out, chat = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "chat"
rows, _ = addition_splits(n_eval=10, chat=chat)  # the tiny model has no chat template
args = ZRLConfig(output_dir=out, verifiers=["last_number"], kl_penalty=kl, beta=0.0 if kl == "none" else 0.04,
                 per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=2,
                 report_to=[], use_cpu=True, bf16=False, save_strategy="no", gradient_checkpointing=False,
                 disable_tqdm=True, logging_steps=1)
trainer = ZRLGRPOTrainer(model, args=args, train_dataset=Dataset.from_list(rows))
trainer.train()
print("RESULT", json.dumps({"kl": kl, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                            "reference_model_loaded": trainer.ref_model is not None}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    args = parser.parse_args()

    import tempfile

    from bench.common import write_results
    from zrl_plugins.apps.models import resolve_model

    workdir = tempfile.mkdtemp(prefix="zrl-kl-memory-")
    model = resolve_model(args.model, workdir)
    results = {}
    for kl in ("none", "k3"):
        done = subprocess.run(
            [sys.executable, "-c", CHILD, model, kl, f"{workdir}/{kl}", "plain" if args.model == "tiny" else "chat"],
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
        results[kl] = json.loads(line.removeprefix("RESULT "))
        print(results[kl])
    ratio = results["k3"]["peak_rss_mib"] / results["none"]["peak_rss_mib"]
    payload = {"benchmark": "peak RSS, kl_penalty k3 / none", "model": args.model, "ratio": ratio, **results}
    table = (
        "| model | reference loaded (none / k3) | peak RSS k3 / none |\n|---|---|---|\n"
        f"| {args.model} | {results['none']['reference_model_loaded']} / {results['k3']['reference_model_loaded']} "
        f"| {ratio:.3f} |"
    )
    write_results(f"kl_memory_{args.model}", payload, table)


if __name__ == "__main__":
    main()
