"""Reasoning-behaviour monitor (an observer plugin): per step, how often completions verify, backtrack, set
subgoals and enumerate (the behaviours SimpleRL-Zoo tracks), plus training accuracy.

The rules are transparent keyword / regular-expression matches, case-insensitive, on the decoded completion; a
completion counts once per behaviour however often it matches. They are proxies, as in the papers' own keyword
counts, not a classifier. Register it with ``plugin_manager.register_plugin(BehaviourMonitor())`` (the recipes do);
metrics are logged as ``behaviour/<name>`` (fraction of completions, all processes) and ``accuracy``.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..framework.hookspecs import hookimpl

BEHAVIOUR_RULES: dict[str, re.Pattern[str]] = {
    "verification": re.compile(
        r"\b(let me (check|verify|double[- ]check)|let's (check|verify|double[- ]check)|double[- ]check(ing)?|"
        r"verif(y|ying|ied|ication)|to confirm|check(ing)? (the|my|our|this) (answer|work|result|calculation)|"
        r"plug(ging)? (it|this|them) back)(?!\w)",
        re.IGNORECASE,
    ),
    "backtracking": re.compile(
        r"\b(wait|actually,|let me re-?(think|consider|calculate|do|evaluate)|let's re-?(think|consider|calculate)|"
        r"(that|this) (is|was|'s) (wrong|incorrect|not right)|i made (a|an) (mistake|error)|on second thought|"
        r"let's try (again|another)|try a different (approach|way))(?!\w)",
        re.IGNORECASE,
    ),
    "subgoal_setting": re.compile(
        r"\b(step \d+|first,|let's (first|start by|break (this|it) down)|we (first )?need to "
        r"(find|compute|calculate|determine|figure out)|to (solve|find|answer) this,? (we|i|let's))(?!\w)",
        re.IGNORECASE,
    ),
    "enumeration": re.compile(
        r"\b(case \d+|case (one|two|three)|(let's|we|i will|i'll) (list|enumerate|try all|go through all|"
        r"consider (all|each|every))|for each (possible|case|option)|all (possible|the possible) "
        r"(values|cases|combinations|options))(?!\w)",
        re.IGNORECASE,
    ),
}


def behaviours(text: str) -> dict[str, bool]:
    """Which behaviours ``text`` shows, by :data:`BEHAVIOUR_RULES`."""
    return {name: bool(rule.search(text)) for name, rule in BEHAVIOUR_RULES.items()}


class BehaviourMonitor:
    """Observer plugin: behaviour frequencies and accuracy of each training rollout batch, added to the next log.

    Args:
        correct_threshold: a completion is correct when the first reward function gives at least this.
    """

    def __init__(self, correct_threshold: float = 1.0):
        self.correct_threshold = correct_threshold
        self._sums: dict[str, float] = {}
        self._batches = 0

    @hookimpl
    def zrl_on_rollout_batch(self, trainer: Any, batch: dict[str, Any]) -> None:
        if batch["mode"] != "train":
            return
        flags = [behaviours(text) for text in batch["completions"]]
        local = torch.tensor(
            [[float(f[name]) for name in BEHAVIOUR_RULES] for f in flags], device=trainer.accelerator.device
        ).reshape(-1, len(BEHAVIOUR_RULES))
        counts = trainer.accelerator.reduce(
            torch.cat([local.sum(0), torch.tensor([float(len(flags))], device=local.device)]), reduction="sum"
        ).cpu()
        total = max(float(counts[-1]), 1.0)
        for i, name in enumerate(BEHAVIOUR_RULES):
            self._add(f"behaviour/{name}", float(counts[i]) / total)
        correct = batch["rewards_per_func"][:, 0] >= self.correct_threshold  # global rows, already gathered
        self._add("accuracy", correct.float().mean().item())
        self._batches += 1

    def _add(self, key: str, value: float) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + value

    @hookimpl
    def zrl_on_log(self, trainer: Any, logs: dict[str, float]) -> None:
        if not self._batches or "loss" not in logs:
            return
        logs.update({key: total / self._batches for key, total in self._sums.items()})
        self._sums.clear()
        self._batches = 0
