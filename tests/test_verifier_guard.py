"""Verifier guard: deadlines for sync and async verifiers, no thread left running per timed-out call, a run that
stops after consecutive timeouts, rewards beyond float32, batch failures recovered row by row, plugin origins."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from tests.helpers import char_count_reward, tiny_config
from zrl_plugins import ComponentContractError, ZRLGRPOTrainer, hookimpl
from zrl_plugins.framework.plugins import ZRLPluginManager
from zrl_plugins.framework.verifier_guard import AsyncNamedVerifier, NamedVerifier, VerifierHangError

RELEASE = threading.Event()


def _spinning(prompts, completions, **columns):
    while True:  # pure Python: stoppable from outside
        pass


def _blocked_in_c(prompts, completions, **columns):
    RELEASE.wait(timeout=30)  # a wait inside C code: an exception raised into the thread waits for it to return
    return [1.0] * len(completions)


class _AsyncHang:
    async def __call__(self, prompts, completions, **columns):
        await asyncio.sleep(30)
        return [1.0] * len(completions)


class _AsyncDigits:
    async def __call__(self, prompts, completions, **columns):
        return char_count_reward(prompts, completions)


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"zrl-verifier-{name}" and t.is_alive()]


def test_a_spinning_verifier_leaves_no_thread_behind():
    guarded = NamedVerifier("spin", _spinning, "test", timeout=0.2, max_consecutive_timeouts=None)
    metrics = {}
    for _ in range(3):
        rewards = guarded(["p"] * 2, ["c"] * 2, log_metric=metrics.__setitem__)
        assert rewards == [None, None]
    assert metrics["verifier/spin/timeouts"] == 2.0
    assert _threads("spin") == []


def test_a_call_stuck_in_c_code_keeps_at_most_one_thread():
    RELEASE.clear()
    guarded = NamedVerifier("blocked", _blocked_in_c, "test", timeout=0.2, max_consecutive_timeouts=None)
    try:
        started = time.perf_counter()
        for _ in range(4):
            assert guarded(["p"], ["c"]) == [None]
        assert len(_threads("blocked")) == 1
        assert time.perf_counter() - started < 4  # later calls do not wait for a deadline of their own
    finally:
        RELEASE.set()
    for thread in _threads("blocked"):
        thread.join(5)
    assert guarded(["p"], ["c"]) == [1.0]  # once the stuck call ended, the verifier is called again


def test_consecutive_timeouts_stop_with_the_verifier_named():
    guarded = NamedVerifier("spin", _spinning, "plugin-x (dist-x 1.0)", timeout=0.1, max_consecutive_timeouts=2)
    assert guarded(["p"], ["c"]) == [None]
    with pytest.raises(VerifierHangError, match=r"verifier 'spin' \(plugin-x \(dist-x 1.0\)\) timed out on 2 calls"):
        guarded(["p"], ["c"])


def test_a_call_that_returns_resets_the_timeout_streak():
    calls = iter([True, False, True, False, True])

    def sometimes_spins(prompts, completions, **columns):
        if next(calls):
            _spinning(prompts, completions)
        return [0.0] * len(completions)

    guarded = NamedVerifier("flaky", sometimes_spins, "test", timeout=0.1, max_consecutive_timeouts=2)
    results = [guarded(["p"], ["c"]) for _ in range(5)]
    assert results == [[None], [0.0], [None], [0.0], [None]]


def test_an_async_verifier_gets_the_deadline():
    guarded = AsyncNamedVerifier("ahang", _AsyncHang(), "test", timeout=0.2, max_consecutive_timeouts=2)
    metrics = {}
    started = time.perf_counter()
    assert asyncio.run(guarded(["p"] * 3, ["c"] * 3, log_metric=metrics.__setitem__)) == [None] * 3
    assert time.perf_counter() - started < 2
    assert metrics["verifier/ahang/timeouts"] == 3.0
    with pytest.raises(VerifierHangError, match="'ahang'"):
        asyncio.run(guarded(["p"], ["c"]))


def test_an_async_verifier_breaking_its_contract_is_named():
    async def too_big(prompts, completions, **columns):
        return [1.0, 1e39]

    guarded = AsyncNamedVerifier("big", too_big, "test", timeout=5)
    with pytest.raises(ComponentContractError, match=r"verifier 'big' \(test\) returned 1e\+39 for row 1"):
        asyncio.run(guarded(["p", "q"], ["c", "d"]))


def test_a_reward_beyond_float32_is_a_contract_error():
    guarded = NamedVerifier("big", lambda prompts, completions, **kw: [0.5, -1e39], "test", timeout=5)
    with pytest.raises(ComponentContractError, match=r"returned -1e\+39 for row 1, beyond float32's range"):
        guarded(["p", "q"], ["c", "d"])
    assert NamedVerifier("ok", lambda prompts, completions, **kw: [3.0e38], "test", timeout=5)(["p"], ["c"]) == [3.0e38]


def test_a_batch_failure_recovered_row_by_row_is_logged_and_counted(caplog):
    def batch_only_fails(prompts, completions, **columns):
        if len(completions) > 1:
            raise RuntimeError("batch endpoint down")
        return [1.0]

    metrics = {}
    guarded = NamedVerifier("batchy", batch_only_fails, "test", timeout=5)
    with caplog.at_level(logging.WARNING, logger="zrl_plugins.framework.verifier_guard"):
        assert guarded(["p", "q"], ["c", "d"], log_metric=metrics.__setitem__) == [1.0, 1.0]
    assert metrics["verifier/batchy/errors"] == 1.0
    assert any("'batchy'" in r.getMessage() and "batch endpoint down" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------------- in the trainer
class HangingVerifiers:
    @hookimpl
    def zrl_register_verifiers(self, register):
        register("ahang", _AsyncHang)
        register("adigits", _AsyncDigits)
        register("spin", lambda: _spinning)
        register("digits", lambda: char_count_reward)


def _trainer(tmp_path, model_path, dataset, **overrides):
    pm = ZRLPluginManager(load_entrypoints=False)
    pm.register_plugin(HangingVerifiers(), name="hanging")
    config = tiny_config(tmp_path, **overrides)
    return ZRLGRPOTrainer(model_path, args=config, train_dataset=dataset, plugin_manager=pm)


def test_an_async_verifier_times_out_in_training(tmp_path, tiny_model_path, arithmetic_dataset):
    trainer = _trainer(
        tmp_path, tiny_model_path, arithmetic_dataset, verifiers=["ahang", "adigits"], max_steps=1, verifier_timeout=0.5
    )
    assert isinstance(trainer.reward_funcs[0], AsyncNamedVerifier)
    started = time.perf_counter()
    trainer.train()
    assert time.perf_counter() - started < 20  # not the verifier's 30 s
    log = next(h for h in trainer.state.log_history if "loss" in h)
    assert log["verifier/ahang/timeouts"] == 8.0 and log["rewards/adigits/mean"] is not None


def test_a_verifier_that_keeps_hanging_stops_the_run(tmp_path, tiny_model_path, arithmetic_dataset):
    trainer = _trainer(
        tmp_path,
        tiny_model_path,
        arithmetic_dataset,
        verifiers=["spin", "digits"],
        max_steps=4,
        verifier_timeout=0.2,
        verifier_max_consecutive_timeouts=2,
    )
    with pytest.raises(VerifierHangError, match="verifier 'spin' .* timed out on 2 calls in a row"):
        trainer.train()
    assert trainer.state.global_step == 1
    assert _threads("spin") == []


def test_a_plugin_registered_in_code_is_named_once(tmp_path, tiny_model_path, arithmetic_dataset):
    trainer = _trainer(tmp_path, tiny_model_path, arithmetic_dataset, verifiers=["digits"])
    assert trainer.reward_funcs[0].origin == "hanging (registered in code)"


def test_the_timeout_streak_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="verifier_max_consecutive_timeouts must be >= 1"):
        tiny_config(tmp_path, verifier_max_consecutive_timeouts=0)
