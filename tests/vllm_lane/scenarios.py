"""vLLM-lane scenarios, each run in a process of its own (vLLM starts worker processes with spawn and sets up
torch.distributed for its colocated engine): ``python tests/vllm/scenarios.py NAME OUT_JSON [ARGS...]``.

Every scenario writes a JSON result that ``test_vllm_colocate.py`` asserts on.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPTS = [[1, 5 + i, 9, 30 + i, 17] for i in range(6)]
GREEDY_TOKENS = 16


def _dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(32)])


def _digits_reward(prompts, completions, **kwargs):
    return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]


def _half_constant_reward(prompts, completions, **kwargs):
    """Equal rewards within the groups of even-numbered problems, so dynamic sampling has groups to re-sample."""
    return [1.0 if int(p.split()[2]) % 2 == 0 else r for p, r in zip(prompts, _digits_reward(prompts, completions))]


def _config(workdir: Path, config_class: Any = None, **overrides: Any):
    from zrl_plugins import ZRLConfig

    settings: dict[str, Any] = dict(
        output_dir=str(workdir / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        seed=0,
        learning_rate=5e-2,
        use_vllm=True,
        vllm_mode="colocate",
        vllm_max_model_length=128,
    )
    settings.update(overrides)
    return (config_class or ZRLConfig)(**settings)


def greedy(llm: Any) -> list[list[int]]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=GREEDY_TOKENS, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def fresh_engine(model_dir: str) -> dict[str, Any]:
    """Greedy generations of a vLLM engine loaded from ``model_dir`` (run in a process of its own)."""
    from vllm import LLM

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29631")
    llm = LLM(
        model=model_dir,
        enforce_eager=True,
        distributed_executor_backend="external_launcher",
        seed=0,
        max_model_len=128,
        max_num_batched_tokens=4096,
        logprobs_mode="processed_logprobs",
    )
    return {"greedy": greedy(llm)}


def sync_matches_fresh(workdir: str, variant: str) -> dict[str, Any]:
    """Build a trainer with vLLM colocate, change the policy's weights, sync, and return vLLM's greedy generations
    before and after the sync, plus a saved copy of the weights the sync should have sent (``expected_dir``)."""
    import torch
    from peft import LoraConfig

    from zrl_plugins import ZRLGRPOTrainer
    from zrl_plugins.apps.tiny_model import build_tiny_model

    work = Path(workdir)
    path = build_tiny_model(work / "model", hidden_size=64, tie_word_embeddings=variant == "tied")
    kwargs: dict[str, Any] = {}
    if variant == "lora":
        kwargs["peft_config"] = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])
    trainer = ZRLGRPOTrainer(
        model=str(path), reward_funcs=_digits_reward, args=_config(work), train_dataset=_dataset(), **kwargs
    )
    llm = trainer.vllm_generation.llm
    before = greedy(llm)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if variant != "lora" or "lora_" in name:
                param.add_(torch.randn_like(param) * (0.5 if variant != "lora" else 0.3))
    trainer.vllm_generation.sync_weights()
    after = greedy(llm)
    expected = work / "expected"
    model = trainer.model
    if variant == "lora":
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(expected)
    trainer.processing_class.save_pretrained(expected)
    # with LoRA the adapters are unmerged again after the sync: training goes on with the adapters
    still_lora = any("lora_" in n for n, _ in trainer.model.named_parameters()) if variant == "lora" else None
    return {"before": before, "after": after, "expected_dir": str(expected), "still_lora": still_lora}


def train(workdir: str, setup: str) -> dict[str, Any]:
    """Train 2 steps with vLLM colocate generation and report what the run logged and what vLLM received."""
    import torch

    from zrl_plugins import ZRLGRPOTrainer, ZRLPPOConfig, ZRLPPOTrainer
    from zrl_plugins.apps.tiny_model import build_tiny_model

    work = Path(workdir)
    path = build_tiny_model(work / "model", hidden_size=64)
    overrides: dict[str, Any] = {}
    reward: Any = _digits_reward
    trainer_cls: Any = ZRLGRPOTrainer
    kwargs: dict[str, Any] = {}
    if setup == "grpo_ingredients":
        overrides = dict(normalizer="dr_grpo", importance_sampling_level="sequence", kl_penalty="k3", beta=0.05)
    elif setup == "dynamic_sampling":
        overrides = dict(rollout="dynamic_sampling", rollout_kwargs={"max_resamples": 2}, max_steps=3)
        reward = _half_constant_reward
    elif setup == "icepop":
        overrides = dict(rollout_correction="icepop")
    elif setup == "lora":
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    elif setup == "ppo":
        trainer_cls = ZRLPPOTrainer
        overrides = dict(config_class=ZRLPPOConfig, critic_learning_rate=1e-2)
    config = _config(work, **overrides)
    trainer = trainer_cls(model=str(path), reward_funcs=reward, args=config, train_dataset=_dataset(), **kwargs)
    generation = trainer.vllm_generation
    sent: list[str] = []
    walk = generation._iter_named_params

    def recording_walk():
        for name, tensor in walk():
            sent.append(name)
            yield name, tensor

    generation._iter_named_params = recording_walk
    if setup == "no_sync":  # negative control: vLLM keeps generating from the initial weights
        generation.sync_weights = lambda: None
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = sum(not torch.equal(before[n], p.detach()) for n, p in trainer.model.named_parameters() if n in before)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {"logs": logs, "sent": sorted(set(sent)), "changed": changed, "steps": trainer.state.global_step}


def eval_generators(workdir: str) -> dict[str, Any]:
    """``zrl eval``'s two generators on the same chat prompts of a tiny model in fp32: vLLM's and transformers'
    greedy completions with their lengths and truncation, and vLLM's samples of one problem generated with the
    others and alone (its seed is its own)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zrl_plugins.apps.generation import TransformersGenerator, VLLMGenerator
    from zrl_plugins.apps.tiny_model import build_tiny_model

    path = str(build_tiny_model(Path(workdir) / "model", hidden_size=64))
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [[{"role": "user", "content": f"What is {a} + {a + 3}?"}] for a in range(5)]
    options = {"max_new_tokens": GREEDY_TOKENS, "temperature": 1.0, "seed": 3}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    hf_greedy, _ = TransformersGenerator(model, tokenizer)(prompts, list(range(5)), k=0, **options)
    generate = VLLMGenerator(path, tokenizer, dtype="float32", max_model_len=256)
    greedy, samples = generate(prompts, list(range(5)), k=4, **options)
    _, alone = generate(prompts[2:3], [2], k=4, **options)
    # more prompt tokens than one engine step takes: vLLM splits prefills, which with seeded samples failed on its
    # CPU build until prefills were kept whole
    long = [[{"role": "user", "content": " ".join(f"word{i}{j}" for j in range(25))}] for i in range(48)]
    _, long_samples = generate(long, list(range(48)), k=4, **options)
    generate.close()
    as_lists = lambda cs: [[c.text, c.tokens, c.truncated] for c in cs]  # noqa: E731
    return {
        "hf_greedy": as_lists(hf_greedy),
        "vllm_greedy": as_lists(greedy),
        "samples": [as_lists(row) for row in samples],
        "alone": as_lists(alone[0]),
        "long_samples": sum(len(row) for row in long_samples),
    }


SCENARIOS = {
    "fresh_engine": fresh_engine,
    "sync_matches_fresh": sync_matches_fresh,
    "train": train,
    "eval_generators": eval_generators,
}

if __name__ == "__main__":
    name, out, *args = sys.argv[1:]
    result = SCENARIOS[name](*args)
    Path(out).write_text(json.dumps(result))
