"""Plugins need only the SDK: no plugin source (nor the core's own built-ins, which are written as plugins) reaches
into a trainer's private attributes; what they need is in zrl_plugins.sdk (zrl_plugins/framework/trainer_api.py)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def private_trainer_accesses(source: str) -> list[str]:
    """``<...trainer...>._name`` attribute accesses (``trainer._metrics``, ``self.trainer._tokenizer``, ...)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        owner = node.value
        name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
        if "trainer" in name.lower():
            found.append(f"{name}.{node.attr} (line {node.lineno})")
    return found


def plugin_sources() -> list[Path]:
    """Every plugin distribution's code and the core's built-ins; plugin tests drive trainers directly and are not
    plugin code."""
    sources = [p for p in (ROOT / "plugins").rglob("*.py") if "tests" not in p.relative_to(ROOT / "plugins").parts]
    return sorted(sources + list((ROOT / "zrl_plugins" / "builtins").rglob("*.py")))


def test_the_scan_finds_private_accesses():
    offending = "def f(trainer, self):\n    trainer._metrics['train']\n    return self.trainer._tokenizer\n"
    assert sorted(private_trainer_accesses(offending)) == ["trainer._metrics (line 2)", "trainer._tokenizer (line 3)"]
    assert private_trainer_accesses("trainer.__class__\ntrainer.args._n_gpu\nmodel._private\n") == []


def test_no_plugin_touches_a_trainers_privates():
    sources = plugin_sources()
    assert any(p.name == "nested.py" for p in sources) and any(p.name == "rollouts.py" for p in sources)
    offenders = {str(p.relative_to(ROOT)): hits for p in sources if (hits := private_trainer_accesses(p.read_text()))}
    assert not offenders, f"use zrl_plugins.sdk (trainer_api.py) instead of trainer privates: {offenders}"
