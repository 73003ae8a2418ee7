"""zrl overrides and calls private members of TRL's GRPOTrainer and transformers' Trainer. Their signatures (and the
trainer attributes zrl reads) are recorded in tests/trl_private_api.json, with the versions they were taken from; the
dependency caps in pyproject.toml allow only those minor versions. Moving a cap is a deliberate step: run this test
against the new version, review each difference in the code that uses the member, then re-record."""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = json.loads((ROOT / "tests" / "trl_private_api.json").read_text())


def _resolve(qualified: str):
    module_and_class, _, attr = qualified.rpartition(".")
    for split in range(module_and_class.count(".") + 1, 0, -1):
        parts = module_and_class.split(".")
        try:
            owner = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            owner = getattr(owner, name)
        return getattr(owner, attr)
    raise ImportError(qualified)


@pytest.mark.parametrize("qualified", sorted(RECORD["members"]))
def test_private_member_signature_is_the_recorded_one(qualified):
    recorded = RECORD["members"][qualified]
    assert str(inspect.signature(_resolve(qualified))) == recorded["signature"], (
        f"{qualified} changed (zrl uses it: {recorded['why']}); review that use, then re-record "
        "tests/trl_private_api.json"
    )


def test_trainer_attributes_zrl_reads_exist(tmp_path, tiny_model_path, arithmetic_dataset):
    from tests.helpers import char_count_reward, tiny_config
    from zrl_plugins import ZRLGRPOTrainer

    args = tiny_config(tmp_path)
    trainer = ZRLGRPOTrainer(tiny_model_path, char_count_reward, args=args, train_dataset=arithmetic_dataset)
    missing = [name for name in RECORD["trainer_attributes"] if not hasattr(trainer, name)]
    assert not missing, f"GRPOTrainer no longer has {missing}"


def test_installed_versions_and_caps_match_the_record():
    import transformers
    import trl

    def minor(version: str) -> str:
        return ".".join(version.split(".")[:2])

    pyproject = (ROOT / "pyproject.toml").read_text()
    for name, module in (("trl", trl), ("transformers", transformers)):
        assert minor(module.__version__) == minor(RECORD[name]), f"{name} {module.__version__} is not the recorded one"
        low, high = re.search(rf'"{name}>=([\d.]+),<([\d.]+)"', pyproject).groups()
        major, minor_number = RECORD[name].split(".")[:2]
        assert (minor(low), high) == (f"{major}.{minor_number}", f"{major}.{int(minor_number) + 1}"), (
            f"pyproject.toml must cap {name} at the recorded minor version {major}.{minor_number}"
        )
