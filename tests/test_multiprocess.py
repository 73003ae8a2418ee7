"""Two CPU processes (gloo): group statistics come from the global batch, as in TRL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import launch_two_cpu_processes
from zrl_plugins.builtins.normalizers import GRPONormalizer

SCRIPT = Path(__file__).parent / "scripts" / "global_groups.py"


@pytest.mark.slow
def test_two_processes_normalize_over_the_global_group(tiny_model_path, tmp_path):
    result = launch_two_cpu_processes(SCRIPT, tiny_model_path, str(tmp_path))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    for step in range(2):
        r0, r1 = ranks[0][step], ranks[1][step]
        assert r0["num_processes"] == 2
        assert r0["global_rewards"] == r1["global_rewards"]  # every process sees the gathered rewards
        rewards = torch.tensor(r0["global_rewards"])
        assert len(rewards) == 4  # one group of 4, split 2 + 2
        expected = GRPONormalizer().advantages(rewards, group_size=4)
        local = torch.tensor(r0["local_advantages"] + r1["local_advantages"])
        torch.testing.assert_close(local, expected, atol=1e-6, rtol=0)
        # statistics over each process's own 2 rows would give something else
        per_process = torch.cat(
            [GRPONormalizer().advantages(rewards[:2], 2), GRPONormalizer().advantages(rewards[2:], 2)]
        )
        assert not torch.allclose(per_process, expected, atol=1e-3)
