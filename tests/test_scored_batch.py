"""ScoredBatch carries the global rewards (every process's rows) and this process's slice of them: group surgery
changes only this process's rows, and ``synced`` rebuilds the global tensors from every process's rows."""

from __future__ import annotations

import math

import torch

from zrl_plugins.framework.scored_batch import ScoredBatch


def _batch(rewards: list[float], truncated: list[bool], local: slice, first_token: int) -> ScoredBatch:
    rows = local.stop - local.start
    output = {
        "prompt_ids": torch.full((rows, 2), first_token),
        "prompt_mask": torch.ones(rows, 2, dtype=torch.long),
        "completion_ids": torch.arange(first_token, first_token + rows).unsqueeze(1).repeat(1, 3),
        "completion_mask": torch.ones(rows, 3, dtype=torch.long),
    }
    inputs = [{"prompt": f"p{first_token + i}"} for i in range(rows)]
    per_func = torch.tensor(rewards).unsqueeze(1)
    return ScoredBatch(inputs, output, per_func, torch.tensor(truncated), "train", 2, local)


def test_the_local_rows_are_one_slice_of_the_global_rewards():
    batch = _batch([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [False] * 7 + [True], slice(4, 8), 10)
    assert batch.local_rewards_per_func.flatten().tolist() == [4.0, 5.0, 6.0, 7.0]
    assert batch.local_truncated.tolist() == [False, False, False, True]
    assert batch.rows == 4 and batch.groups == 2


def test_replacing_a_group_on_process_1_changes_only_its_own_rows_of_the_global_rewards():
    batch = _batch([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [False] * 8, slice(4, 8), 10)
    fresh = _batch([90.0, 91.0, 92.0, 93.0, 94.0, 95.0, 96.0, 97.0], [True] * 8, slice(4, 8), 50)
    swapped = batch.replace_groups(fresh, targets=[1], sources=[0])  # local group 1 <- fresh local group 0
    assert swapped.rewards_per_func.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 94.0, 95.0]
    assert swapped.truncated.tolist() == [False] * 6 + [True, True]
    assert swapped.output["completion_ids"][:, 0].tolist() == [10, 11, 50, 51]
    assert [row["prompt"] for row in swapped.inputs] == ["p10", "p11", "p50", "p51"]
    assert batch.rewards_per_func.flatten().tolist()[6:] == [6.0, 7.0]  # the original is left as it was


def test_dropping_a_group_marks_its_rows_unscorable_and_out_of_the_loss():
    batch = _batch([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [True] * 8, slice(4, 8), 10)
    dropped = batch.drop_groups(torch.tensor([True, False]))
    values = dropped.rewards_per_func.flatten().tolist()
    assert values[:6] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and all(math.isnan(v) for v in values[6:])
    assert dropped.truncated.tolist() == [True] * 6 + [False, False]
    assert dropped.output["completion_mask"].sum(-1).tolist() == [3, 3, 0, 0]


def test_synced_rebuilds_the_global_tensors_from_every_process_rows():
    process_0 = _batch([0.0, 1.0, 2.0, 3.0, -1.0, -1.0, -1.0, -1.0], [False] * 8, slice(0, 4), 0)  # stale tail
    process_1 = _batch([-1.0, -1.0, -1.0, -1.0, 4.0, 5.0, 6.0, 7.0], [True] * 8, slice(4, 8), 10)

    def gather(local: torch.Tensor) -> torch.Tensor:  # what accelerate's gather returns: every process's rows
        key = "local_truncated" if local.dtype == torch.bool else "local_rewards_per_func"
        return torch.cat([getattr(process, key) for process in (process_0, process_1)])

    synced = process_0.synced(gather)
    assert synced.rewards_per_func.flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert synced.truncated.tolist() == [False] * 4 + [True] * 4
    assert synced.local == slice(0, 4) and synced.inputs == process_0.inputs
