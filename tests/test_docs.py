"""The docs the code points to exist and say what the code does: no reference to a file outside the repository,
every link into a heading of docs/methods.md resolves, the hook counts and checkpoint names in prose match the code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith((".py", ".md", ".yaml", ".toml", ".sh")) and (ROOT / n).exists()]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_no_reference_to_a_spec_outside_the_repository():
    pattern = re.compile(r"SPEC(\.md)? ?§")
    files = [p for p in _tracked_text_files() if p.name != "test_docs.py"]
    offenders = [str(p.relative_to(ROOT)) for p in files if pattern.search(p.read_text(errors="ignore"))]
    assert not offenders, offenders


def test_every_methods_anchor_resolves():
    methods = (ROOT / "docs" / "methods.md").read_text()
    anchors = {_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", methods, re.M)}
    used = {}
    for path in _tracked_text_files():
        for anchor in re.findall(r"methods\.md#([\w\-]+)", path.read_text(errors="ignore")):
            used.setdefault(anchor, str(path.relative_to(ROOT)))
    assert used, "nothing links to docs/methods.md"
    missing = {a: where for a, where in used.items() if a not in anchors}
    assert not missing, missing


def test_prose_counts_and_names_match_the_code():
    from zrl_plugins.framework import hookspecs

    registration = [n for n in dir(hookspecs) if n.startswith("zrl_register_")]
    words = {5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
    readme = (ROOT / "README.md").read_text()
    assert f"the {words[len(registration)]}\nregistration hooks" in readme or (
        f"the {words[len(registration)]} registration hooks" in readme
    )
    from zrl_plugins.trainers.grpo import STATE_FILE

    source = Path(hookspecs.__file__).read_text()  # the checkpoint file the hookspec documents is the one written
    assert "zrl_state.pt" not in source and STATE_FILE.format(rank="<rank>") in source
