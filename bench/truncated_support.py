"""The bias of the rollout ratio under top-k / top-p sampling with vLLM: the kept probability mass S.

vLLM returns log-probs renormalized over the tokens top-k / top-p keep (log p − log S), the trainer's π_old is the
full-vocabulary softmax, so each token ratio π_old / π_behaviour is multiplied by S (trl#6789). This measures S on
the next-token distributions of sampled completions (temperature 1) of a model, per setting.

    python -m bench.truncated_support                 # the tiny test model (no download)
    python -m bench.truncated_support --model PATH    # any local causal LM
"""

from __future__ import annotations

import argparse
import tempfile

import torch


def kept_mass(probs: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """S per position: the probability mass of the tokens that top-k, then top-p (cumulative mass before a token
    below p, as vLLM and transformers keep them) leave."""
    sorted_probs, _ = probs.sort(-1, descending=True)
    keep = torch.ones_like(sorted_probs, dtype=torch.bool)
    if top_k:
        keep[..., top_k:] = False
    kept = sorted_probs * keep
    keep &= (kept.cumsum(-1) - kept) < top_p * kept.sum(-1, keepdim=True)
    return (sorted_probs * keep).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a local model directory (default: the tiny test model)")
    parser.add_argument("--new_tokens", type=int, default=32)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zrl_plugins.apps.tiny_model import build_tiny_model

    path = args.model or str(build_tiny_model(tempfile.mkdtemp()))
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    prompts = tokenizer([f"What is {a} + {a + 1}?" for a in range(16)], return_tensors="pt", padding=True)
    with torch.no_grad():
        sampling = {"do_sample": True, "top_k": 0, "top_p": 1.0, "pad_token_id": tokenizer.pad_token_id or 0}
        ids = model.generate(**prompts, max_new_tokens=args.new_tokens, **sampling)
        start = prompts.input_ids.shape[1] - 1
        probs = torch.softmax(model(ids).logits[:, start:-1].float(), -1).reshape(-1, model.config.vocab_size)
    print(f"model {args.model or 'tiny test model'}: vocabulary {probs.shape[-1]}, {probs.shape[0]} positions")
    print("| setting | mean S | mean log S (log-ratio bias per token) |\n|---|---|---|")
    for top_k, top_p in ((0, 1.0), (50, 1.0), (20, 1.0), (0, 0.95), (0, 0.9), (0, 0.8), (50, 0.9)):
        s = kept_mass(probs, top_k, top_p)
        print(f"| top_k={top_k}, top_p={top_p} | {s.mean():.4f} | {s.log().mean():.4f} |")


if __name__ == "__main__":
    main()
