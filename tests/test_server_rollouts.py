"""Server generation without vLLM: the rollout stream's staleness bound, version tags and faults against a fake
server, the data-loader lookahead, the HTTP client's errors against a loopback stub, the launcher's parent-death
rule, and the config checks. The real server (vLLM's CPU build) is exercised in tests/vllm_lane/test_async.py."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from zrl_plugins.framework.errors import ConfigError
from zrl_plugins.serving.client import Completion, SamplingOptions, ServerClient, ServerError
from zrl_plugins.serving.launcher import ServerSettings, parse_cpus, server_command
from zrl_plugins.serving.stream import BatchKey, RolloutStream, prompt_seeds, unique_prompts
from zrl_plugins.trainers.server_rollouts import Lookahead

OPTIONS = SamplingOptions(max_tokens=4)


class FakeClient:
    """A server whose completions encode the weight version they were generated from."""

    base_url = "http://fake:1"
    request_timeout = 5.0

    def __init__(self, delay: float = 0.0, fail_after: int | None = None):
        self.version = -1
        self.delay = delay
        self.fail_after = fail_after
        self.requests: list[tuple[list[int], int, int | None]] = []
        self.hang = threading.Event()

    def complete_batch(self, prompts, n, options, seeds):
        if self.fail_after is not None and len(self.requests) >= self.fail_after:
            raise ServerError(f"the vLLM server at {self.base_url} did not answer /v1/completions")
        time.sleep(self.delay)
        self.requests.extend((p, n, s) for p, s in zip(prompts, seeds, strict=True))
        return [[Completion([self.version, i], [-0.5, -0.25]) for i in range(n)] for _ in prompts]

    def weight_version(self):
        return str(self.version)


class FakeSender:
    deferred = True

    def __init__(self, client: FakeClient):
        self.client = client
        self.sent: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.closed = False

    def send(self, walk, version):
        self.sent.append((version, {k: v.clone() for k, v in walk()}))
        self.client.version = version

    def close(self):
        self.closed = True


def _weights(value: float) -> Any:
    return lambda: iter([("w", torch.full((2,), value))])


def _stream(client: FakeClient, max_staleness: int, **kwargs: Any) -> tuple[RolloutStream, FakeSender]:
    sender = FakeSender(client)
    return RolloutStream(client, sender, OPTIONS, max_staleness, **kwargs), sender


def _prompts(step: int) -> list[list[int]]:
    return [[1, step], [1, step], [2, step], [2, step]]  # two prompts, groups of 2


def test_a_batch_is_never_older_than_the_bound_whatever_the_trainer_does():
    for max_staleness in (0, 1, 2):
        client = FakeClient()
        stream, sender = _stream(client, max_staleness)
        stream.publish(0, _weights(0.0))
        steps = 6
        for step in range(min(steps, max_staleness + 1)):  # the lookahead's first fill
            stream.submit(_prompts(step), 2, BatchKey(step, 0))
        versions = []
        for step in range(steps):
            batch = stream.take(_prompts(step), step, deadline_s=10)
            versions.append(batch.version)
            assert step - batch.version <= max_staleness
            # every completion was generated from the version the batch is tagged with
            assert {c.token_ids[0] for c in batch.completions} == {batch.version}
            time.sleep(0.05)  # a slow step (e.g. a slow verifier): the stream must wait, not run further ahead
            stream.publish(step + 1, _weights(step + 1.0))
            if step + 1 + max_staleness < steps:
                stream.submit(_prompts(step + 1 + max_staleness), 2, BatchKey(step + 1 + max_staleness, 0))
        if max_staleness == 0:
            assert versions == list(range(steps))  # the synchronous run: each step's own weights
        else:
            assert max(s - v for s, v in enumerate(versions)) >= 1  # it did run ahead
        stream.close()
        assert sender.closed


def test_the_newest_published_weights_are_sent_and_a_copy_is_taken():
    client = FakeClient()
    stream, sender = _stream(client, 1)
    param = torch.zeros(2)
    stream.publish(0, lambda: iter([("w", param)]))
    param.add_(1.0)  # training goes on changing the parameter after publishing
    stream.submit(_prompts(0), 2, BatchKey(0, 0))
    stream.take(_prompts(0), 0, deadline_s=10)
    assert sender.sent[0][0] == 0 and torch.equal(sender.sent[0][1]["w"], torch.zeros(2))
    stream.close()


def test_prompts_are_sent_once_per_group_with_seeds_from_the_batch_key():
    client = FakeClient()
    stream, _ = _stream(client, 0, seed=7)
    stream.publish(0, _weights(0.0))
    stream.submit(_prompts(0), 2, BatchKey(0, 0))
    stream.take(_prompts(0), 0, deadline_s=10)
    stream.generate_now(_prompts(0), 2, BatchKey(0, 0))  # the synchronous path, same key: same seeds
    first, second = client.requests[:2], client.requests[2:]
    assert [r[0] for r in first] == [[1, 0], [2, 0]] and all(r[1] == 2 for r in first)
    assert first == second
    assert prompt_seeds(7, BatchKey(0, 0), 0, 2, 2) == [s for _, _, s in first]
    assert prompt_seeds(7, BatchKey(0, 1), 0, 2, 2) != [s for _, _, s in first]
    assert all(s % 2 == 0 for s in prompt_seeds(7, BatchKey(3, 0), 1, 4, 2))  # a request's samples take seed + i
    stream.close()


def test_rows_that_are_not_groups_are_asked_one_sample_each():
    assert unique_prompts([[1], [1], [2], [2]], 2) == ([[1], [2]], 2)
    assert unique_prompts([[1], [2], [2], [2]], 2) == ([[1], [2], [2], [2]], 1)
    assert unique_prompts([[1], [1], [1]], 2) == ([[1], [1], [1]], 1)


def test_a_server_that_fails_stops_training_with_its_url():
    client = FakeClient(fail_after=0)
    stream, _ = _stream(client, 1)
    stream.publish(0, _weights(0.0))
    stream.submit(_prompts(0), 2, BatchKey(0, 0))
    with pytest.raises(ServerError, match="http://fake:1"):
        stream.take(_prompts(0), 0, deadline_s=10)
    stream.close()


def test_a_server_that_stops_answering_is_bounded_by_the_deadline():
    client = FakeClient(delay=30)
    stream, _ = _stream(client, 1)
    stream.publish(0, _weights(0.0))
    stream.submit(_prompts(0), 2, BatchKey(0, 0))
    start = time.monotonic()
    with pytest.raises(ServerError, match="stopped answering"):
        stream.take(_prompts(0), 0, deadline_s=1)
    assert time.monotonic() - start < 5


def test_a_launched_server_that_exits_ends_the_wait_at_once():
    alive = [True]
    client = FakeClient(delay=30)
    stream, _ = _stream(client, 1, server_alive=lambda: alive[0])
    stream.publish(0, _weights(0.0))
    stream.submit(_prompts(0), 2, BatchKey(0, 0))
    alive[0] = False
    start = time.monotonic()
    with pytest.raises(ServerError, match="exited"):
        stream.take(_prompts(0), 0, deadline_s=60)
    assert time.monotonic() - start < 3


def test_taking_a_batch_other_than_the_planned_one_is_an_error():
    client = FakeClient()
    stream, _ = _stream(client, 1)
    stream.publish(0, _weights(0.0))
    stream.submit(_prompts(0), 2, BatchKey(0, 0))
    with pytest.raises(RuntimeError, match="not the one step 0 trains on"):
        stream.take(_prompts(5), 0, deadline_s=5)
    with pytest.raises(RuntimeError, match="not the one step 3 trains on"):
        stream.take(_prompts(0), 3, deadline_s=5)
    assert stream.cancel_planned() == 1
    with pytest.raises(RuntimeError, match="never submitted"):
        stream.take(_prompts(0), 0, deadline_s=5)
    stream.close()


def test_another_process_waits_until_the_server_reports_the_version():
    client = FakeClient()
    stream = RolloutStream(client, None, OPTIONS, max_staleness=0)
    stream.publish(1, _weights(1.0))  # not the sender: walks (a collective) and keeps nothing
    stream.submit(_prompts(1), 2, BatchKey(1, 0))
    threading.Timer(0.3, lambda: setattr(client, "version", 1)).start()  # the main process sends it
    batch = stream.take(_prompts(1), 1, deadline_s=10)
    assert batch.version == 1
    stream.close()


def test_lookahead_submits_each_generation_batch_with_the_step_that_trains_on_it():
    submitted: list[tuple[Any, BatchKey]] = []
    # 2 micro-batches per optimizer step, a generation every 2 micro-batches (steps_per_generation=2), 1 step ahead
    lookahead = Lookahead(steps_ahead=1, micro_batches_per_step=2, generate_every=2)
    iterator = iter(range(12))
    taken = [lookahead.take(iterator, 2, step, lambda b, k: submitted.append((b, k))) for step in range(3)]
    assert taken == [[0, 1], [2, 3], [4, 5]]
    assert submitted == [(0, BatchKey(0, 0)), (2, BatchKey(1, 0)), (4, BatchKey(2, 0)), (6, BatchKey(3, 0))]
    # num_iterations=2 with one micro-batch per step: the generation batch repeats, generated once
    submitted.clear()
    lookahead = Lookahead(steps_ahead=0, micro_batches_per_step=1, generate_every=2)
    iterator = iter(range(4))
    for step in range(4):
        lookahead.take(iterator, 1, step, lambda b, k: submitted.append((b, k)))
    assert submitted == [(0, BatchKey(0, 0)), (2, BatchKey(2, 0))]


def test_lookahead_stops_at_the_end_of_an_epoch():
    lookahead = Lookahead(steps_ahead=2, micro_batches_per_step=1, generate_every=1)
    keys: list[BatchKey] = []
    iterator = iter(range(2))
    assert lookahead.take(iterator, 1, 0, lambda b, k: keys.append(k)) == [0]
    assert lookahead.take(iterator, 1, 1, lambda b, k: keys.append(k)) == [1]
    assert lookahead.take(iterator, 1, 2, lambda b, k: keys.append(k)) == []
    assert keys == [BatchKey(0, 0), BatchKey(1, 0)]


# ------------------------------------------------------------------------------------------------ HTTP client
@contextmanager
def _stub_server(handler: Any) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


class _NoRLEndpoints(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.send_response(404)
        self.end_headers()
        self.wfile.write(b'{"detail": "Not Found"}')

    def log_message(self, *args):
        pass


class _Slow(_NoRLEndpoints):
    def do_GET(self):
        time.sleep(3)


def test_a_server_without_rl_endpoints_says_how_to_start_one():
    with _stub_server(_NoRLEndpoints) as url, pytest.raises(ServerError, match="VLLM_SERVER_DEV_MODE=1.*zrl_shm"):
        ServerClient(url).init_weight_transfer_engine({"directory": "/tmp"})


def test_requests_have_a_deadline_and_name_the_server():
    with _stub_server(_Slow) as url:
        client = ServerClient(url, request_timeout=0.5)
        start = time.monotonic()
        with pytest.raises(ServerError, match=f"{url}.*vllm_request_timeout"):
            client.weight_version()
        assert time.monotonic() - start < 2.5
    with pytest.raises(ServerError, match="not ready after 0.5 s"):
        ServerClient("http://127.0.0.1:9", request_timeout=1).wait_until_ready(0.5)


def test_server_cores_are_parsed_as_taskset_writes_them():
    assert parse_cpus("0") == {0} and parse_cpus("0-3") == {0, 1, 2, 3} and parse_cpus("0, 2-3") == {0, 2, 3}


def test_the_launch_command_serves_on_loopback_with_zrls_engine():
    command = server_command(ServerSettings(model="m", max_model_len=128, seed=3), 4321)
    joined = " ".join(command)
    assert "--host 127.0.0.1 --port 4321" in joined
    assert '{"backend": "zrl_shm"}' in command
    assert "--logprobs-mode processed_logprobs" in joined and "--enforce-eager" in command
    assert "--generation-config vllm" in joined and "--seed 3" in joined


def test_a_launched_child_dies_with_its_parent_even_on_sigkill(tmp_path):
    # the parent starts a child the way the launcher starts vLLM, prints its pid, then waits to be killed
    parent = textwrap.dedent(
        """
        import subprocess, sys, time
        from zrl_plugins.serving.launcher import _die_with_parent
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=_die_with_parent)
        print(child.pid, flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its SIGKILLed parent")


# ------------------------------------------------------------------------------------------------ config
def test_async_config_is_checked_before_anything_loads(tmp_path):
    from tests.helpers import tiny_config

    with pytest.raises(ConfigError, match="use_vllm=True"):
        tiny_config(tmp_path, async_rollouts=True)
    with pytest.raises(ConfigError, match="weight_sync_steps must be between 1 and max_staleness \\+ 1 = 2"):
        tiny_config(tmp_path, use_vllm=True, async_rollouts=True, max_staleness=1, weight_sync_steps=3)
    with pytest.raises(ConfigError, match="max_staleness must be >= 0"):
        tiny_config(tmp_path, max_staleness=-1)
    with pytest.raises(ConfigError, match="vllm_weight_transfer"):
        tiny_config(tmp_path, vllm_weight_transfer="gloo")
    config = tiny_config(tmp_path, use_vllm=True, async_rollouts=True, max_staleness=2, weight_sync_steps=3)
    assert config.vllm_mode == "server"


def test_server_generation_refuses_what_it_cannot_serve(tmp_path, monkeypatch, arithmetic_dataset):
    import importlib.util
    from types import SimpleNamespace

    from tests.helpers import char_count_reward, tiny_config
    from zrl_plugins import ZRLGRPOTrainer
    from zrl_plugins.trainers import grpo, vllm_cpu

    nested = tiny_config(tmp_path, use_vllm=True, async_rollouts=True, rollout="nested")
    server = tiny_config(tmp_path, use_vllm=True, vllm_mode="server")
    real = importlib.util.find_spec  # vLLM "installed", a CPU build
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: SimpleNamespace(name=n) if n == "vllm" else real(n, *a)
    )
    monkeypatch.setattr(vllm_cpu, "vllm_runs_on_cpu", lambda: True)
    monkeypatch.setattr(grpo, "vllm_runs_on_cpu", lambda: True)
    with pytest.raises(ConfigError, match="rollout 'nested'.*generates itself"):
        ZRLGRPOTrainer("/nonexistent/model", char_count_reward, args=nested, train_dataset=arithmetic_dataset)
    with pytest.raises(ConfigError, match="tools"):
        ZRLGRPOTrainer(
            "/nonexistent/model",
            char_count_reward,
            args=server,
            train_dataset=arithmetic_dataset,
            tools=[len],
        )
