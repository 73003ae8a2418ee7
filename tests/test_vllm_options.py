"""zrl's vLLM plumbing that needs no vLLM: refusals before anything loads, the engine-option wrapper, the repack
rule of the CPU weight sync. The sync itself runs against vLLM's CPU build in the vLLM lane (tests/vllm_lane)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

from zrl_plugins.framework.errors import ConfigError
from zrl_plugins.trainers import vllm_cpu

MISSING_MODEL = "/nonexistent/model"  # loading it would fail with an OSError: a ConfigError means nothing loaded


def _without_vllm(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))


def test_use_vllm_without_vllm_names_the_extra(tmp_path, monkeypatch, arithmetic_dataset):
    from tests.helpers import char_count_reward, tiny_config
    from zrl_plugins import ZRLGRPOTrainer

    _without_vllm(monkeypatch)
    with pytest.raises(ConfigError, match=r"zrl-plugins\[vllm\]"):
        ZRLGRPOTrainer(
            MISSING_MODEL,
            char_count_reward,
            args=tiny_config(tmp_path, use_vllm=True),
            train_dataset=arithmetic_dataset,
        )


def test_server_mode_on_a_cpu_build_is_zrls_server_generation(monkeypatch):
    from types import SimpleNamespace as Components

    from zrl_plugins.trainers.server_setup import check_server_generation

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: SimpleNamespace(name=name))
    monkeypatch.setattr(vllm_cpu, "vllm_runs_on_cpu", lambda: True)
    vllm_cpu.check_vllm_options(True, "server")  # no longer refused: tests/test_server_rollouts.py, vllm_lane
    components = Components(rollout=Components(name="default", component=Components(replaces_generation=False)))
    args = SimpleNamespace(use_vllm=True, vllm_mode="server", async_rollouts=False)
    assert check_server_generation(args, True, components, {})  # CPU: zrl's server generation
    assert not check_server_generation(args, False, components, {})  # GPU: TRL's own server mode, NCCL
    args.vllm_mode = "colocate"
    assert not check_server_generation(args, True, components, {})
    args.async_rollouts = True
    assert check_server_generation(args, False, components, {})


def test_engine_options_reach_trls_llm_only_while_building(monkeypatch):
    from trl.generation import vllm_generation

    calls = []

    def fake_llm(**kwargs):
        calls.append(kwargs)

    monkeypatch.setattr(vllm_generation, "LLM", fake_llm, raising=False)
    with vllm_cpu.engine_options(enforce_eager=True):
        vllm_generation.LLM(model="m")
    vllm_generation.LLM(model="m")
    with vllm_cpu.engine_options():
        vllm_generation.LLM(model="m")
    assert calls == [{"model": "m", "enforce_eager": True}, {"model": "m"}, {"model": "m"}]


class _Method:
    def __init__(self):
        self.processed = []

    def process_weights_after_loading(self, layer):
        self.processed.append(layer)


def _layer(weight: torch.Tensor, packed: bool = True) -> torch.nn.Module:
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    layer.quant_method = _Method()
    if packed:
        layer.cpu_linear = torch.nn.functional.linear
    return layer


def test_repack_touches_only_layers_that_keep_their_weight_beside_a_packed_copy():
    model = torch.nn.Module()
    model.lm_head = _layer(torch.ones(8, 4))  # tied LM head: weight kept, packed copy stale after a reload
    model.q_proj = _layer(torch.empty(0))  # a linear layer: weight dropped after packing, reload repacks it
    model.norm = _layer(torch.ones(4), packed=False)  # no packed GEMM at all
    assert vllm_cpu.repack_kept_weights(model) == 1
    assert model.lm_head.quant_method.processed == [model.lm_head]
    assert model.q_proj.quant_method.processed == [] and model.norm.quant_method.processed == []


def test_cpu_sync_is_for_colocate_only():
    with pytest.raises(ConfigError, match="colocate"):
        vllm_cpu.install_cpu_weight_sync(SimpleNamespace(mode="server"))
