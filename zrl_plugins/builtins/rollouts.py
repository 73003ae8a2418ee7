"""The core's reference rollout strategy ``default``: TRL's own generation, unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..framework.trainer_api import generate_with_trl


class DefaultRollout:
    """Plain sampling by TRL (``default``, docs/methods.md#nested). With ``replaces_generation = False`` the trainer
    does not install a ``rollout_func`` at all, so TRL's generation, vLLM server/colocate modes and tool loop run
    exactly as in TRL."""

    replaces_generation = False
    off_policy = False

    def __call__(self, prompts: Sequence[Any], trainer: Any) -> dict[str, Any]:
        return generate_with_trl(prompts, trainer)
