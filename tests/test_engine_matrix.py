"""The engine matrix's own logic (bench/engines.py) on a fake launcher: commands per engine, cell verdicts, layout."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from bench import engines

STEPS = 3


def _fingerprint(scale: float) -> dict[str, list[float]]:
    return {"model.layers.0.mlp.up_proj.weight": [1.0 * scale, 2.0 * scale], "lm_head.weight": [3.0, 4.0]}


def _critic(scale: float) -> dict[str, list[float]]:
    return {"zrl_critic.score.weight": [0.0 * scale, 5.0 * scale]}


def fake_launcher(
    train_change=1.5, resume_from=1.5, grad_norms=(1.0, 2.0, 3.0), fail_phase=None, critic_change=2.0, critic_norms=None
):
    """Writes what bench/engine_cell.py would write, from the cell's own command line."""

    def launch(command: list[str], env: dict[str, str], timeout: float) -> int:
        arg = dict(itertools.pairwise(command))
        phase, workdir = arg["--phase"], Path(arg["--workdir"])
        if phase == fail_phase:
            (workdir / "log.txt").write_text("Traceback ...\nRuntimeError: boom\n")
            return 1
        if phase == "train":
            result = {
                "step_begin": 0,
                "step_end": STEPS,
                "grad_norm": list(grad_norms),
                "step_time": [9.0, 1.0, 2.0],
                "peak_memory_mib": 1234.5,
                "distributed_type": "DistributedType.DEEPSPEED",
                "num_processes": 1,
                "policy_begin": _fingerprint(1.0),
                "policy_end": _fingerprint(train_change),
                "critic_begin": _critic(1.0),
                "critic_end": _critic(critic_change),
                "critic_grad_norm": list(critic_norms or [None] * STEPS),
            }
        else:
            result = {
                "step_begin": STEPS,
                "step_end": STEPS + 1,
                "grad_norm": [4.0],
                "step_time": [1.0],
                "policy_begin": _fingerprint(resume_from),
                "policy_end": _fingerprint(2.0),
                "critic_begin": _critic(critic_change),
                "critic_end": _critic(3.0),
            }
        (workdir / f"{phase}.json").write_text(json.dumps(result))
        return 0

    return launch


def cell(tmp_path, recipe="ppo_max", **fake):
    return engines.run_cell("zero3", recipe, tmp_path, "small", STEPS, "cuda", 1, launcher=fake_launcher(**fake))


def test_a_cell_that_trains_changes_weights_and_resumes_exactly_is_green(tmp_path):
    record = cell(tmp_path)
    assert record["green"] and record["ok"] and record["grad_nonzero"] and record["params_changed"]
    assert record["resumed"]
    assert record["step_time_s"] == 1.5  # steps 2..n: the first step's warm-up is left out
    assert (record["grad_norm_step1"], record["peak_memory_mib"]) == (1.0, 1234.5)


@pytest.mark.parametrize(
    ("fake", "failed"),
    [
        ({"train_change": 1.0, "resume_from": 1.0}, "params_changed"),  # the policy's weights did not move
        ({"critic_change": 1.0}, "params_changed"),  # PPO: the critic's did not
        ({"resume_from": 1.25}, "resumed"),  # the resumed run started from other weights
        ({"grad_norms": (1.0, 0.0, 3.0)}, "grad_nonzero"),  # one step without gradient
    ],
)
def test_each_flag_can_fail_on_its_own(tmp_path, fake, failed):
    record = cell(tmp_path, **fake)
    assert not record[failed] and not record["green"]
    assert all(record[k] for k in ("ok", "grad_nonzero", "params_changed", "resumed") if k != failed)


def test_a_critic_that_does_not_move_only_matters_for_ppo(tmp_path):
    assert cell(tmp_path, recipe="simplerl_zoo", critic_change=1.0)["green"]


def test_a_failed_phase_stops_the_cell_and_keeps_the_log(tmp_path):
    calls = []
    launcher = fake_launcher(fail_phase="train")

    def counting(command, env, timeout):
        calls.append(command)
        return launcher(command, env, timeout)

    record = engines.run_cell("ddp", "nested_reft", tmp_path, "small", STEPS, "cuda", 1, launcher=counting)
    assert len(calls) == 1 and record["return_codes"] == {"train": 1}  # no resume after a failed training phase
    assert not record["ok"] and not record["green"] and "RuntimeError: boom" in record["log_tail"]


def test_launch_commands_pick_the_engine_config_and_processes(tmp_path):
    for engine, config in engines.ACCELERATE_CONFIGS.items():
        command, env = engines.launch_command(engine, "ppo_max", "train", tmp_path, "medium", 3, "cuda", 4)
        assert command[command.index("--config_file") + 1].endswith(f"recipes/accelerate/{config}")
        assert command[command.index("--num_processes") + 1] == "4"
        assert command[command.index("--mixed_precision") + 1] == "bf16"
        assert command[command.index("--engine") + 1] == engine and "bench.engine_cell" in command
    command, env = engines.launch_command("fsdp2", "ppo_max", "train", tmp_path, "small", 3, "cpu", 1)
    assert "--multi_gpu" in command and command[command.index("--num_processes") + 1] == "2"  # gloo processes
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    command, _ = engines.launch_command("zero3", "ppo_max", "train", tmp_path, "small", 3, "cpu", 1)
    assert command[command.index("--mixed_precision") + 1] == "no"


def test_matrix_layout_table_and_spread(tmp_path):
    seen = []
    cells = engines.run_matrix(
        ["ddp", "zero3"],
        ["simplerl_zoo", "ppo_max"],
        tmp_path,
        "small",
        STEPS,
        "cuda",
        1,
        parallel=2,
        launcher=fake_launcher(),
        on_cell=seen.append,
    )
    assert [(c["engine"], c["recipe"]) for c in cells] == [
        ("ddp", "simplerl_zoo"),
        ("ddp", "ppo_max"),
        ("zero3", "simplerl_zoo"),
        ("zero3", "ppo_max"),
    ]
    assert len(seen) == 4 and len(seen[-1]) == 4  # the partial result is saved after every cell
    for c in cells:
        assert {"engine", "recipe", "ok", "grad_nonzero", "params_changed", "resumed"} <= set(c)
    table = engines.markdown(cells, "NVIDIA H200")
    assert "4 of 4 cells green on NVIDIA H200" in table and "ppo_max 1–1 (0.00 %)" in table


def test_step_one_norm_is_global_when_actor_and_critic_are_clipped_apart(tmp_path):
    record = cell(tmp_path, grad_norms=(4.0, 1.0, 1.0), critic_norms=(3.0, 1.0, 1.0))
    assert record["grad_norm_step1"] == pytest.approx(5.0)  # comparable with DeepSpeed's one global norm
