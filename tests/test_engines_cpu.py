"""PPO and nested under sharded engines, for real, on CPU: DeepSpeed ZeRO-3 on its CPU accelerator (one process)
and FSDP2 over two gloo processes. Each cell trains 2 steps of a small random Llama, saves, and resumes for a third
step (bench/engines.py; the GPU matrix runs every engine x recipe)."""

from __future__ import annotations

import pytest

pytest.importorskip("deepspeed")

from bench import engines


@pytest.mark.slow
@pytest.mark.parametrize(
    ("engine", "recipe"),
    [
        ("zero3", "ppo_max"),
        ("zero3", "nested_reft"),
        ("fsdp2", "ppo_max_shared"),
        ("zero3", "ppo_max_packed"),
        ("fsdp2", "ppo_max_packed"),
    ],
)
def test_cell_trains_changes_weights_and_resumes_exactly(engine, recipe, tmp_path):
    from zrl_plugins.apps.models import resolve_model

    resolve_model("small", tmp_path / "models")
    record = engines.run_cell(engine, recipe, tmp_path, "small", 2, "cpu", 1, timeout=400)
    assert record["green"], record.get("log_tail", record)
    assert record["distributed_type"] == ("DistributedType.DEEPSPEED" if engine == "zero3" else "DistributedType.FSDP")
