"""Generation on a ``vllm serve`` process with vLLM's CPU build: zrl's shared-memory weight transfer, the
synchronous server mode, ``async_rollouts`` with every kind of ingredient, and the faults.

The servers are started by fixtures on free loopback ports (tiny fp32 models, head_dim 32, ``enforce_eager``) and
stopped with the module; the scenarios run in processes of their own (``server_scenarios.py``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: run `bash scripts/test_vllm.sh`")
pytestmark = pytest.mark.vllm

SCENARIOS = Path(__file__).with_name("server_scenarios.py")


def run(name: str, *args: str, workdir: Path, timeout: int = 600) -> dict[str, Any]:
    out = workdir / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(SCENARIOS), name, str(out), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=workdir,
    )
    if proc.returncode != 0:
        pytest.fail(f"scenario {name} {args} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def _serve(model_dir: Path) -> Any:
    from zrl_plugins.serving.launcher import ServerSettings, launch

    settings = ServerSettings(model=str(model_dir), max_model_len=128, dtype="float32", cpus="0", kv_cache_gib=1)
    return launch(settings, startup_timeout=300, request_timeout=120)


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Any:
    """One server per head variant, started on first use, all stopped with the module."""
    from zrl_plugins.apps.tiny_model import build_tiny_model

    started: dict[str, Any] = {}

    def get(variant: str = "untied") -> str:
        if variant not in started:
            # the scenarios' model (hidden 64, 2 layers), its tied-head twin, and the recipes' `small` (4 layers)
            shape = {"small": {"num_layers": 4}, "tied": {"tie_word_embeddings": True}}.get(variant, {})
            path = build_tiny_model(tmp_path_factory.mktemp(variant) / "model", hidden_size=64, **shape)
            started[variant] = _serve(path)
        return started[variant].client.base_url

    yield get
    for server in started.values():
        server.stop()


# ------------------------------------------------------------------------------------------------ weight transfer
@pytest.mark.parametrize("variant", ["untied", "tied", "lora"])
def test_weights_sent_to_a_server_generate_as_the_same_weights(variant, servers, tmp_path):
    url = servers("tied" if variant == "tied" else "untied")
    result = run("transfer", str(tmp_path), variant, url, workdir=tmp_path)
    assert result["before"] != result["after"], "the changed weights did not change the server's generations"
    assert result["after"] == result["reference"], "the server does not generate as the weights it was sent"
    assert result["version"] == "1"
    if variant == "lora":
        assert result["still_lora"], "the adapters must be unmerged again after the transfer"
    if variant == "tied":  # a fresh server loaded from the same weights generates the same (the repacked LM head)
        fresh = _serve(Path(result["expected_dir"]))
        try:
            assert run("greedy_of", str(tmp_path), fresh.client.base_url, workdir=tmp_path)["greedy"] == result["after"]
        finally:
            fresh.stop()


# ------------------------------------------------------------------------------------------------ exactness
def _close(a: float, b: float, rel: float = 1e-5) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-7)


def test_async_with_no_staleness_reproduces_the_synchronous_run(servers, tmp_path):
    url = servers()
    sync = run("train", str(tmp_path / "sync"), "sync", url, workdir=_mkdir(tmp_path / "sync"))
    async0 = run("train", str(tmp_path / "a0"), "async0", url, workdir=_mkdir(tmp_path / "a0"))
    stale = run("train", str(tmp_path / "a1"), "async1", url, workdir=_mkdir(tmp_path / "a1"))
    assert len(sync["logs"]) == len(async0["logs"]) == 4
    for step, (s, a) in enumerate(zip(sync["logs"], async0["logs"], strict=True)):
        for key in ("loss", "reward", "kl", "entropy", "rollout/behaviour_kl"):
            assert _close(s[key], a[key]), f"step {step + 1}: {key} {s[key]} (sync) != {a[key]} (async, staleness 0)"
        assert a["async/staleness_max"] == 0 and a["async/weight_version"] == step
    # the control: one version of staleness changes what is trained on from the second step on
    assert [h["async/weight_version"] for h in stale["logs"]] == [0, 0, 1, 2]
    assert not _close(sync["logs"][2]["loss"], stale["logs"][2]["loss"])
    assert stale["logs"][2]["rollout/behaviour_kl"] > 10 * abs(sync["logs"][2]["rollout/behaviour_kl"])


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------------ ingredients
@pytest.mark.parametrize("setup", ["ingredients", "rloo_tis", "dynamic_sampling", "ppo", "lora"])
def test_async_training_with_every_kind_of_ingredient(setup, servers, tmp_path):
    result = run("train", str(tmp_path), setup, servers(), workdir=tmp_path)
    bound = {"ingredients": 2, "rloo_tis": 2}.get(setup, 1)
    assert result["steps"] == 4 and result["changed"] > 0
    logs = result["logs"]
    assert all(h["async/staleness_max"] <= bound for h in logs)
    assert max(h["async/staleness_max"] for h in logs) >= 1, "nothing was generated ahead"
    versions = [h["async/weight_version"] for h in logs]
    assert versions == sorted(versions)
    assert {"rollout/behaviour_kl", "rollout/ess", "rollout/masked_fraction"} <= logs[-1].keys()
    shown = [(h["rollout/ess"], h["rollout/masked_fraction"]) for h in logs]
    assert all(0 < ess <= 1 + 1e-6 and 0 <= masked <= 1 for ess, masked in shown), shown
    assert not [n for n in result["sent"] if "lora_" in n or "zrl_critic" in n or "zrl_value_head" in n]
    if setup == "ingredients":
        assert logs[-1]["kl"] > 0
        assert "sampling/importance_sampling_ratio/min" in logs[-1]  # icepop's mask statistics
        assert result["server_version"] in ("2", "4")  # weight_sync_steps=2: even versions only
    if setup == "dynamic_sampling":
        assert sum(h["rollout/resample_rounds_mean"] for h in logs) > 0  # refills generated on the server
    if setup == "ppo":
        assert any(k.startswith("critic/") for k in logs[-1])


def test_a_slow_verifier_cannot_push_samples_past_the_bound(servers, tmp_path):
    logs = run("train", str(tmp_path), "slow_verifier", servers(), workdir=tmp_path)["logs"]
    assert [h["async/staleness_max"] for h in logs] == [0, 1, 1, 1, 1]
    assert all(h["async/wait_s"] < 5 for h in logs)


# ------------------------------------------------------------------------------------------------ faults
def test_resume_restores_the_weight_version_and_discards_what_was_in_flight(servers, tmp_path):
    result = run("resume", str(tmp_path), servers(), workdir=tmp_path)
    resumed = [h for h in result["resumed"] if h["step"] > 2]  # the restored history holds steps 1 and 2
    assert [h["step"] for h in resumed] == [3, 4]
    assert result["resumed"][:2] == result["first"][:2]
    # the resumed run publishes the restored step's weights: its first batch is generated from them
    assert resumed[0]["async/weight_version"] == 2 and resumed[0]["async/staleness_max"] == 0
    assert any("resuming at weight version 2" in m and "discarded" in m for m in result["messages"])


@pytest.mark.parametrize("kind", ["dies", "hangs"])
def test_a_broken_server_stops_training_in_bounded_time_naming_it(kind, tmp_path):
    result = run("fault", str(tmp_path), kind, workdir=tmp_path)
    assert result["error"] is not None and "ServerError" in result["error"]
    assert result["url"] in result["error"]
    assert result["steps"] < 6
    assert result["seconds"] < (20 if kind == "dies" else 40), result


def test_a_launched_server_exits_when_the_trainer_is_killed(tmp_path):
    pid_file = tmp_path / "server.pid"
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIOS), "orphan", str(tmp_path / "o.json"), str(tmp_path), str(pid_file)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not pid_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pid_file.exists(), "the trainer never started its server"
    server = int(pid_file.read_text())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not _process_group_alive(server):
            return
        time.sleep(0.5)
    os.killpg(server, signal.SIGKILL)
    pytest.fail("the vLLM server (or one of its processes) outlived the SIGKILLed trainer")


def _process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_zrl_train_with_async_rollouts(servers, tmp_path):
    from tests.helpers import TINY_RECIPE_FLAGS

    zrl = Path(sys.executable).with_name("zrl")
    flags = ["--preset", "cpu-demo", "--model_name_or_path", "small", *TINY_RECIPE_FLAGS, "--bf16", "false"]
    flags += ["--use_vllm", "true", "--async_rollouts", "true", "--max_staleness", "1"]
    flags += ["--vllm_server_base_url", servers("small"), "--vllm_max_model_length", "128"]
    flags += ["--output_dir", str(tmp_path)]
    proc = subprocess.run([str(zrl), "train", "simplerl_zoo", *flags], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    steps = [h for h in summary["log_history"] if "loss" in h]
    assert summary["config"]["async_rollouts"] is True and summary["config"]["vllm_mode"] == "server"
    assert len(steps) == 2 and [h["async/staleness_max"] for h in steps] == [0, 1]
