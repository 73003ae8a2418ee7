"""Scenarios of generation on a ``vllm serve`` process (synchronous server mode and ``async_rollouts``), each run
in a process of its own: ``python tests/vllm_lane/server_scenarios.py NAME OUT_JSON [ARGS...]``.

Most connect to the server that ``test_async.py``'s fixture started (``URL``); the fault scenarios start their own
(``vllm_server_launch``) because they kill it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

# run as a script: its own folder is on sys.path, so the colocate scenarios' settings are shared from there
from scenarios import _config, _dataset, _digits_reward, _half_constant_reward

GREEDY_PROMPTS = [[1, 5 + i, 9, 30 + i, 17] for i in range(4)]
GREEDY_TOKENS = 12
KEYS = ("loss", "reward", "kl", "entropy", "rollout/behaviour_kl", "rollout/ess", "rollout/masked_fraction")


def _server_config(work: Path, url: str | None, **overrides: Any):
    settings: dict[str, Any] = dict(vllm_mode="server", max_steps=4)
    if url is None:
        settings.update(vllm_server_launch=True, vllm_server_cpus="0")
    else:
        settings.update(vllm_server_base_url=url, vllm_server_launch=False)
    settings.update(overrides)
    return _config(work, **settings)


def _steps(trainer: Any) -> list[dict[str, Any]]:
    return [h for h in trainer.state.log_history if "loss" in h]


def greedy_through_server(client: Any) -> list[list[int]]:
    from zrl_plugins.serving.client import SamplingOptions

    options = SamplingOptions(max_tokens=GREEDY_TOKENS, temperature=0.0, extra=(("ignore_eos", True),))
    return [c[0].token_ids for c in client.complete_batch(GREEDY_PROMPTS, 1, options, [0] * len(GREEDY_PROMPTS))]


def greedy_reference(model: Any) -> list[list[int]]:
    """Greedy decoding by hand in fp32 (argmax at every step, EOS ignored as the server is asked to)."""
    import torch

    results = []
    with torch.no_grad():
        for prompt in GREEDY_PROMPTS:
            ids = torch.tensor([prompt])
            for _ in range(GREEDY_TOKENS):
                next_id = model(input_ids=ids).logits[0, -1].argmax()
                ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
            results.append(ids[0, len(prompt) :].tolist())
    return results


def transfer(workdir: str, variant: str, url: str) -> dict[str, Any]:
    """Change the policy's weights, send them to the server, and return its greedy generations before and after,
    the hand-decoded reference of the same weights, and a saved copy of them (``expected_dir``)."""
    import copy

    import torch
    from peft import LoraConfig

    from zrl_plugins import ZRLGRPOTrainer
    from zrl_plugins.apps.tiny_model import build_tiny_model

    work = Path(workdir)
    path = build_tiny_model(work / "model", hidden_size=64, tie_word_embeddings=variant == "tied")
    kwargs: dict[str, Any] = {}
    if variant == "lora":
        kwargs["peft_config"] = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])
    config = _server_config(work, url)
    trainer = ZRLGRPOTrainer(str(path), reward_funcs=_digits_reward, args=config, train_dataset=_dataset(), **kwargs)
    generation = trainer.vllm_generation
    generation.publish(0)
    generation.stream.generate_now([GREEDY_PROMPTS[0]], 1)  # loads version 0
    before = greedy_through_server(generation.stream.client)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if variant != "lora" or "lora_" in name:
                param.add_(torch.randn_like(param) * (0.5 if variant != "lora" else 0.3))
    generation.publish(1)
    generation.stream.generate_now([GREEDY_PROMPTS[0]], 1)  # loads version 1
    after = greedy_through_server(generation.stream.client)
    model = trainer.model
    if variant == "lora":
        model = copy.deepcopy(model).merge_and_unload()
    expected = work / "expected"
    model.save_pretrained(expected)
    trainer.processing_class.save_pretrained(expected)
    still_lora = any("lora_" in n for n, _ in trainer.model.named_parameters()) if variant == "lora" else None
    return {
        "before": before,
        "after": after,
        "reference": greedy_reference(model.eval()),
        "version": generation.stream.client.weight_version(),
        "expected_dir": str(expected),
        "still_lora": still_lora,
    }


def greedy_of(workdir: str, url: str) -> dict[str, Any]:
    """The greedy generations of the server at ``url`` as it is (a fresh server, in the transfer test)."""
    from zrl_plugins.serving.client import ServerClient

    return {"greedy": greedy_through_server(ServerClient(url))}


SETUPS: dict[str, dict[str, Any]] = {
    # the exactness trio: synchronous server mode, async with no staleness, and the control with staleness 1
    "sync": dict(kl_penalty="k3", beta=0.05),
    "async0": dict(kl_penalty="k3", beta=0.05, async_rollouts=True, max_staleness=0),
    "async1": dict(kl_penalty="k3", beta=0.05, async_rollouts=True, max_staleness=1),
    # every kind of ingredient, generated ahead
    "ingredients": dict(
        async_rollouts=True,
        max_staleness=2,
        weight_sync_steps=2,
        normalizer="dr_grpo",
        importance_sampling_level="sequence",
        kl_penalty="k3",
        beta=0.05,
        rollout_correction="icepop",
    ),
    "rloo_tis": dict(async_rollouts=True, max_staleness=2, normalizer="rloo", rollout_correction="token_tis"),
    "dynamic_sampling": dict(
        async_rollouts=True, max_staleness=1, rollout="dynamic_sampling", rollout_kwargs={"max_resamples": 2}
    ),
    "ppo": dict(async_rollouts=True, max_staleness=1, critic_learning_rate=1e-2),
    "lora": dict(async_rollouts=True, max_staleness=1),
    "slow_verifier": dict(async_rollouts=True, max_staleness=1, max_steps=5),
}


def _slow_reward(prompts, completions, **kwargs):
    time.sleep(0.4)  # slower than generating a batch: the stream would run further ahead if nothing bounded it
    return _digits_reward(prompts, completions)


def train(workdir: str, setup: str, url: str) -> dict[str, Any]:
    import torch

    from zrl_plugins import ZRLGRPOTrainer, ZRLPPOConfig, ZRLPPOTrainer
    from zrl_plugins.apps.tiny_model import build_tiny_model

    work = Path(workdir)
    path = build_tiny_model(work / "model", hidden_size=64)
    overrides = dict(SETUPS[setup])
    trainer_cls: Any = ZRLGRPOTrainer
    reward: Any = {"dynamic_sampling": _half_constant_reward, "slow_verifier": _slow_reward}.get(setup, _digits_reward)
    kwargs: dict[str, Any] = {}
    if setup == "ppo":
        trainer_cls, overrides["config_class"] = ZRLPPOTrainer, ZRLPPOConfig
    if setup == "lora":
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    config = _server_config(work, url, **overrides)
    trainer = trainer_cls(model=str(path), reward_funcs=reward, args=config, train_dataset=_dataset(), **kwargs)
    sent: set[str] = set()
    walk = trainer.vllm_generation._iter_named_params

    def recording_walk():
        for name, tensor in walk():
            sent.add(name)
            yield name, tensor

    trainer.vllm_generation._iter_named_params = recording_walk
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = sum(not torch.equal(before[n], p.detach()) for n, p in trainer.model.named_parameters() if n in before)
    return {
        "logs": _steps(trainer),
        "steps": trainer.state.global_step,
        "changed": changed,
        "sent": sorted(sent),
        "server_version": trainer.vllm_generation.stream.client.weight_version(),
    }


def resume(workdir: str, url: str) -> dict[str, Any]:
    """Train 4 steps ahead of the server (max_staleness 2), saving at step 2; then resume from checkpoint-2."""
    from zrl_plugins import ZRLGRPOTrainer
    from zrl_plugins.apps.tiny_model import build_tiny_model

    work = Path(workdir)
    path = build_tiny_model(work / "model", hidden_size=64)
    settings = dict(async_rollouts=True, max_staleness=2, save_strategy="steps", save_steps=2)
    first = ZRLGRPOTrainer(
        str(path), _digits_reward, args=_server_config(work, url, **settings), train_dataset=_dataset()
    )
    first.train()
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logging.getLogger("zrl_plugins").addHandler(Capture())
    second = ZRLGRPOTrainer(
        str(path), _digits_reward, args=_server_config(work, url, **settings), train_dataset=_dataset()
    )
    second.train(resume_from_checkpoint=str(work / "out" / "checkpoint-2"))
    return {"first": _steps(first), "resumed": _steps(second), "messages": records}


def fault(workdir: str, kind: str) -> dict[str, Any]:
    """Start a server (zrl launches it), break it after the first step, and report how training stopped.

    ``dies``: SIGKILL to the server's processes; ``hangs``: SIGSTOP (it stops answering; requests time out)."""
    from transformers import TrainerCallback

    from zrl_plugins import ZRLGRPOTrainer
    from zrl_plugins.apps.tiny_model import build_tiny_model

    work = Path(workdir)
    path = build_tiny_model(work / "model", hidden_size=64)
    config = _server_config(work, None, async_rollouts=True, max_staleness=1, max_steps=6, vllm_request_timeout=5.0)
    trainer = ZRLGRPOTrainer(str(path), _digits_reward, args=config, train_dataset=_dataset())
    server = trainer.vllm_generation.server
    broken_at: list[float] = []

    class Break(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.killpg(server.process.pid, signal.SIGKILL if kind == "dies" else signal.SIGSTOP)
                broken_at.append(time.monotonic())

    trainer.add_callback(Break())
    error = None
    try:
        trainer.train()
    except Exception as exc:  # the scenario reports it
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.monotonic() - broken_at[0] if broken_at else None
    if kind == "hangs":
        os.killpg(server.process.pid, signal.SIGCONT)
    server.stop()
    return {"error": error, "seconds": seconds, "steps": trainer.state.global_step, "url": server.client.base_url}


def orphan(workdir: str, pid_file: str) -> dict[str, Any]:
    """Start a trainer with a launched server, write the server's pid, and wait to be killed."""
    from zrl_plugins import ZRLGRPOTrainer
    from zrl_plugins.apps.tiny_model import build_tiny_model

    work = Path(workdir)
    path = build_tiny_model(work / "model", hidden_size=64)
    config = _server_config(work, None, async_rollouts=True, max_staleness=1)
    trainer = ZRLGRPOTrainer(str(path), _digits_reward, args=config, train_dataset=_dataset())
    Path(pid_file).write_text(str(trainer.vllm_generation.server.process.pid))
    time.sleep(600)
    return {}


SCENARIOS = {
    "transfer": transfer,
    "greedy_of": greedy_of,
    "train": train,
    "resume": resume,
    "fault": fault,
    "orphan": orphan,
}

if __name__ == "__main__":
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    name, out, *args = sys.argv[1:]
    result = SCENARIOS[name](*args)
    Path(out).write_text(json.dumps(result))
