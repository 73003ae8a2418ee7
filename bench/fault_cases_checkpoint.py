"""Checkpoint faults injected on a tiny model, and what resume makes of them: one row per fault.

``cases(workdir)`` is imported by the fault benchmark (``bench/faults.py``); ``python -m bench.fault_cases_checkpoint``
runs it alone and prints the rows as a markdown table. Each row: the fault injected, the outcome, the checkpoint
resumed from, whether the restored component state (the adaptive KL coefficient) equals the uninterrupted run's, and
the first line of the error or warning the user sees.

The kill points run through ``tests/scripts/checkpoint_kills.py`` (one process; each point in a forked child killed
with ``os._exit`` inside the save); the other faults run in this process.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from tests.scripts.checkpoint_kills import ADAPTIVE, POINTS
from zrl_plugins import hookimpl

ROOT = Path(__file__).resolve().parents[1]
KILL_SCRIPT = ROOT / "tests" / "scripts" / "checkpoint_kills.py"


def _row(fault: str, outcome: str, resumed_from: str | None, state_equal: bool | None, message: str) -> dict:
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    return {
        "fault": fault,
        "outcome": outcome,
        "resumed_from": resumed_from,
        "state_equal": state_equal,
        "message": first_line,
    }


def _kill_rows(model: str, workdir: Path) -> list[dict]:
    out = workdir / "kills"
    out.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, str(KILL_SCRIPT), model, str(out), *POINTS], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(f"{KILL_SCRIPT.name} failed:\n{result.stderr[-3000:]}")
    reference = json.loads((out / "reference" / "reference_rank0.json").read_text())
    rows = []
    for point in POINTS:
        resumed = json.loads((out / point / "resumed_rank0.json").read_text())
        exit_code = int((out / point / "exit_rank0").read_text())
        fault = "observer raises in zrl_on_save_checkpoint" if point == "save raises" else f"killed {point}"
        if "error" in resumed:
            rows.append(_row(fault, f"exit {exit_code}; resume failed", None, None, resumed["error"]))
            continue
        [(name, beta)] = resumed["loaded"]
        step = name.rsplit("-", 1)[1]
        equal = beta == reference["kl_coef"][step] and abs(resumed["final_beta"] - reference["final_beta"]) < 1e-9
        rows.append(_row(fault, f"exit {exit_code}; resumed", name, equal, "\n".join(resumed["warnings"])))
    return rows


class _Probe:
    def __init__(self) -> None:
        self.loaded: list[tuple[str, float]] = []

    @hookimpl
    def zrl_on_load_checkpoint(self, trainer: Any, checkpoint_dir: str, state: dict) -> None:
        self.loaded.append((os.path.basename(checkpoint_dir), trainer.kl_penalty.controller.beta))


def _trainer(model: str, run_dir: Path, probe: _Probe | None = None, **overrides: Any) -> Any:
    from datasets import Dataset

    from zrl_plugins import ZRLConfig, ZRLGRPOTrainer
    from zrl_plugins.framework.plugins import ZRLPluginManager

    settings: dict[str, Any] = dict(
        output_dir=str(run_dir / "out"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=0,
        learning_rate=1e-2,
        disable_tqdm=True,
        save_strategy="steps",
        save_steps=1,
        kl_penalty="k1",
        beta=0.05,
        kl_penalty_kwargs=ADAPTIVE,
    )
    pm = ZRLPluginManager()
    if probe is not None:
        pm.register_plugin(probe, name="probe")
    data = Dataset.from_list([{"prompt": f"What is {a} + {a + 1}?"} for a in range(16)])

    def reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]

    return ZRLGRPOTrainer(
        model, reward, args=ZRLConfig(**{**settings, **overrides}), train_dataset=data, plugin_manager=pm
    )


def _state_beta(checkpoint_dir: Path) -> float:
    from zrl_plugins.trainers.checkpoint import load_state

    return load_state(checkpoint_dir / "zrl_state_0.pt")["components"]["kl_penalty"]["beta"]


def _resume(model: str, run_dir: Path, fault: str, **overrides: Any) -> dict:
    """Resume ``run_dir`` with ``resume_from_checkpoint=True`` (or ``resume``) and report what happened."""
    resume = overrides.pop("resume", True)
    probe = _Probe()
    trainer = _trainer(model, run_dir, probe, **overrides)
    handler, zrl_logger = _Capture(), logging.getLogger("zrl_plugins")
    level = zrl_logger.level
    zrl_logger.addHandler(handler)
    zrl_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.train(resume_from_checkpoint=resume)
    except Exception as exc:
        return _row(fault, f"refused ({type(exc).__name__})", None, None, str(exc))
    finally:
        zrl_logger.removeHandler(handler)
        zrl_logger.setLevel(level)
    notes = [str(w.message) for w in caught if "incomplete checkpoint" in str(w.message)] + handler.lines
    [(name, beta)] = probe.loaded
    equal = beta == _state_beta(run_dir / "out" / name) if "beta" not in overrides else None
    return _row(fault, "resumed", name, equal, "\n".join(notes))


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _fresh_run(model: str, workdir: Path, name: str) -> Path:
    run_dir = workdir / name
    _trainer(model, run_dir).train()
    return run_dir


def _other_rows(model: str, workdir: Path) -> list[dict]:
    import shutil

    from zrl_plugins.trainers import checkpoint

    rows = []
    base = _fresh_run(model, workdir, "base")  # checkpoint-1 and checkpoint-2, both complete

    def copy(name: str) -> Path:
        shutil.copytree(base, workdir / name)
        return workdir / name

    for label, damage in [
        ("empty", lambda data: b""),
        ("truncated", lambda data: data[: len(data) // 2]),
        ("garbage", lambda data: b"no checkpoint here\n" * 50),
    ]:
        run_dir = copy(f"corrupt-{label}")
        state_file = run_dir / "out" / "checkpoint-2" / "zrl_state_0.pt"
        state_file.write_bytes(damage(state_file.read_bytes()))
        rows.append(_resume(model, run_dir, f"zrl state file {label} (newest checkpoint)", max_steps=3))

    run_dir = copy("malicious")
    marker = run_dir / "PWNED"
    state_file = run_dir / "out" / "checkpoint-2" / "zrl_state_0.pt"
    state = torch.load(state_file, weights_only=True)
    state["plugins"]["evil"] = _RunsCode(str(marker))
    torch.save(state, state_file)
    row = _resume(model, run_dir, "zrl state file carrying code (os.system)", max_steps=3)
    row["outcome"] += "; code ran" if marker.exists() else "; code not run"
    rows.append(row)

    run_dir = copy("explicit-incomplete")
    (run_dir / "out" / "checkpoint-2" / checkpoint.MANIFEST).unlink()
    rows.append(
        _resume(
            model,
            run_dir,
            "explicit path to an incomplete checkpoint",
            max_steps=3,
            resume=str(run_dir / "out" / "checkpoint-2"),
        )
    )

    run_dir = copy("changed")
    rows.append(
        _resume(
            model,
            run_dir,
            "resume with kl_penalty k3, beta 0.2",
            max_steps=3,
            kl_penalty="k3",
            kl_penalty_kwargs={},
            beta=0.2,
        )
    )
    rows.append(_resume(model, run_dir, "resume with beta 0.2", max_steps=3, beta=0.2))
    row = _resume(
        model, run_dir, "resume with beta 0.2 and resume_override", max_steps=3, beta=0.2, resume_override=True
    )
    rows.append(row)

    rows += [_full_disk(model, workdir, tmpfs=True), _full_disk(model, workdir, tmpfs=False)]
    return rows


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _full_disk(model: str, workdir: Path, tmpfs: bool) -> dict:
    """A 1 MiB tmpfs as output dir (where mounting is allowed), or a writer that raises ENOSPC at step 2."""
    run_dir = workdir / ("full-tmpfs" if tmpfs else "full-enospc")
    run_dir.mkdir()
    mounted = tmpfs and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(run_dir)]).returncode == 0
    if tmpfs and not mounted:
        return _row("output dir on a 1 MiB tmpfs", "skipped: cannot mount a tmpfs here", None, None, "")
    fault = "output dir on a 1 MiB tmpfs" if tmpfs else "torch.save raises ENOSPC in the step-2 save"
    try:
        trainer = _trainer(model, run_dir, max_steps=4)
        if not tmpfs:
            _raise_enospc_from(trainer, step=2)
        try:
            trainer.train()
            return _row(fault, "no error", None, None, "")
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
        row = _resume(model, run_dir, fault, max_steps=4, save_strategy="no")  # the disk is still full
        row["outcome"] = f"save failed; then {row['outcome']}"
        row["message"] = message.splitlines()[0]
        return row
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(run_dir)], check=False)


def _raise_enospc_from(trainer: Any, step: int) -> None:
    original = trainer._save_checkpoint

    def save(model: Any, trial: Any) -> None:
        if trainer.state.global_step == step:

            def full(*args: Any, **kwargs: Any) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")

            torch.save, real = full, torch.save
            try:
                return original(model, trial)
            finally:
                torch.save = real
        return original(model, trial)

    trainer._save_checkpoint = save


def cases(workdir: Path) -> list[dict]:
    """Inject every checkpoint fault on a tiny model under ``workdir``; one row per fault."""
    from zrl_plugins.apps.tiny_model import build_tiny_model

    workdir = Path(workdir)
    model = str(build_tiny_model(workdir / "tiny-llama"))
    return _kill_rows(model, workdir) + _other_rows(model, workdir)


def markdown(rows: list[dict]) -> str:
    lines = ["| fault | outcome | resumed from | state equal | message |", "|---|---|---|---|---|"]
    for r in rows:
        message = r["message"].replace("|", "\\|")
        message = message if len(message) <= 240 else message[:237] + "..."
        lines.append(
            f"| {r['fault']} | {r['outcome']} | {r['resumed_from'] or '-'} | "
            f"{'-' if r['state_equal'] is None else r['state_equal']} | {message} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None, help="where the runs go (default: a temporary directory)")
    options = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        print(markdown(cases(Path(options.workdir or tmp))))


if __name__ == "__main__":
    main()
