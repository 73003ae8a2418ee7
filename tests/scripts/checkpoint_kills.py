"""Kill a run at each point of its step-2 save, then resume each run: used by tests/test_checkpoint_kills.py and
bench/fault_cases_checkpoint.py, on 1 process (``python``) or 2 (``accelerate launch``).

    checkpoint_kills.py MODEL OUT POINT[:RANK] ...

For each point, a forked child (per process; the parent has only imported torch, so children start clean, and each
child pair joins a process group of its own) trains OUT/<point> and the process RANK (default 0) dies at that point of
the step-2 save (``save raises``: an observer raises there). When one process of a pair stops, its parent stops the
other, as torchrun would. Then the parents train OUT/reference uninterrupted and resume every OUT/<point> with
``resume_from_checkpoint=True``, writing OUT/<point>/resumed_rank<r>.json (the checkpoint resumed from with the KL
coefficient restored, the coefficient reached, the warnings, any error) and OUT/reference/reference_rank<r>.json.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
import warnings

from datasets import Dataset
from transformers import TrainerState

from tests.helpers import TINY_TRAINING
from zrl_plugins import ZRLConfig, ZRLGRPOTrainer, hookimpl
from zrl_plugins.apps.distributed import shutdown_distributed
from zrl_plugins.framework.plugins import ZRLPluginManager
from zrl_plugins.trainers import checkpointing  # save() calls write_state and rotate by these names

KILL_STEP = 2
KILLED = 137  # what a SIGKILLed process reports, so that the launcher treats it as one
POINTS = (
    "before model",
    "after model",
    "after optimizer",
    "after trainer state",
    "before zrl state",
    "after zrl state",
    "after marker",
    "after rotation",
    "save raises",
)
ADAPTIVE = {"controller": "adaptive", "controller_kwargs": {"target_kl": 0.001, "horizon": 10}}
RANK = int(os.environ.get("RANK", "0"))
saving = {"step": -1}


def reward(prompts, completions, **kwargs):
    return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]


def trainer(model: str, run_dir: str, pm: ZRLPluginManager) -> ZRLGRPOTrainer:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    settings = {**TINY_TRAINING, "per_device_train_batch_size": 8 // world, "max_steps": 3, "disable_tqdm": True}
    saving_every_step = dict(save_strategy="steps", save_steps=1, save_total_limit=1)
    args = ZRLConfig(
        output_dir=run_dir,
        kl_penalty="k1",
        beta=0.05,
        kl_penalty_kwargs=ADAPTIVE,
        **{**settings, **saving_every_step},
    )
    data = Dataset.from_list([{"prompt": f"What is {a} + {a + 1}?"} for a in range(16)])
    return ZRLGRPOTrainer(model, reward, args=args, train_dataset=data, plugin_manager=pm)


def die_if(point: str, here: str) -> None:
    if point == here and saving["step"] == KILL_STEP:
        sys.stdout.flush()
        os._exit(KILLED)


def install(point: str) -> None:
    """Wrap each step of a save so that this process dies at ``point`` of the step-2 save."""

    def around(owner, name, before: str | None, after: str | None):
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            if before:
                die_if(point, before)
            result = original(*args, **kwargs)
            if after:
                die_if(point, after)
            return result

        setattr(owner, name, wrapped)

    original_save = ZRLGRPOTrainer._save_checkpoint

    def save(self, model, trial):
        saving["step"] = self.state.global_step
        return original_save(self, model, trial)

    ZRLGRPOTrainer._save_checkpoint = save
    around(ZRLGRPOTrainer, "save_model", "before model", "after model")
    around(ZRLGRPOTrainer, "_save_optimizer_and_scheduler", None, "after optimizer")
    around(TrainerState, "save_to_json", None, "after trainer state")
    around(checkpointing, "write_state", "before zrl state", "after zrl state")
    around(checkpointing, "rotate", "after marker", "after rotation")


class RaisesOnSave:
    @hookimpl
    def zrl_on_save_checkpoint(self, trainer, checkpoint_dir, state):
        if trainer.state.global_step == KILL_STEP:
            raise OSError("the metrics server is gone")


class Probe:
    def __init__(self):
        self.loaded = []

    @hookimpl
    def zrl_on_load_checkpoint(self, trainer, checkpoint_dir, state):
        self.loaded.append((os.path.basename(checkpoint_dir), trainer.kl_penalty.controller.beta))


def kill(model: str, out: str, spec: str) -> None:
    point, _, rank = spec.partition(":")
    pm = ZRLPluginManager()
    if int(rank or 0) == RANK:
        if point == "save raises":
            pm.register_plugin(RaisesOnSave(), name="raises-on-save")
        else:
            install(point)
    trainer(model, os.path.join(out, point), pm).train()


def resume(model: str, out: str, points: list[str]) -> None:
    reference = trainer(model, os.path.join(out, "reference"), ZRLPluginManager())
    reference.train()
    betas = {h["step"]: h["kl_coef"] for h in reference.state.log_history if "kl_coef" in h}
    with open(os.path.join(out, "reference", f"reference_rank{RANK}.json"), "w") as f:
        json.dump({"kl_coef": betas, "final_beta": reference.kl_penalty.controller.beta}, f)
    for point in points:
        pm, probe = ZRLPluginManager(), Probe()
        pm.register_plugin(probe, name="probe")
        resumed = trainer(model, os.path.join(out, point), pm)
        result: dict = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                resumed.train(resume_from_checkpoint=True)
            except Exception as exc:  # reported to the test, which names the point
                result["error"] = f"{type(exc).__name__}: {exc}"
        result.update(
            loaded=probe.loaded,
            final_beta=resumed.kl_penalty.controller.beta,
            warnings=[str(w.message) for w in caught if "incomplete checkpoint" in str(w.message)],
        )
        with open(os.path.join(out, point, f"resumed_rank{RANK}.json"), "w") as f:
            json.dump(result, f)


def run_children(model: str, out: str, specs: list[str]) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    base_port = int(os.environ.get("MASTER_PORT", "29500"))
    for index, spec in enumerate(specs):
        folder = os.path.join(out, spec.partition(":")[0])
        os.makedirs(folder, exist_ok=True)
        pid = os.fork()
        if pid == 0:
            os.environ["MASTER_PORT"] = str(base_port + 1 + index)
            os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "False"  # rank 0's child hosts its own store
            code = 0
            try:
                kill(model, out, spec)
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        stopped = os.path.join(folder, "stopped")
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    open(stopped, "a").close()
                break
            if world > 1 and os.path.exists(stopped):
                os.kill(pid, signal.SIGKILL)
                code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                break
            time.sleep(0.1)
        with open(os.path.join(folder, f"exit_rank{RANK}"), "w") as f:
            f.write(str(code))
        open(os.path.join(folder, f"done_{RANK}"), "a").close()
        while not all(os.path.exists(os.path.join(folder, f"done_{r}")) for r in range(world)):
            time.sleep(0.1)


def main() -> None:
    model, out, *specs = sys.argv[1:]
    run_children(model, out, specs)
    resume(model, out, [spec.partition(":")[0] for spec in specs])
    shutdown_distributed()


if __name__ == "__main__":
    main()
