"""What a run's ``summary.json`` records so that it can be reproduced: versions, device and precision, seed, config."""

from __future__ import annotations

import importlib.metadata
import json
import math
from typing import Any

LIBRARIES = ("zrl-plugins", "trl", "transformers", "torch", "accelerate", "peft", "datasets", "deepspeed")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(plugins: Any = None) -> dict[str, str]:
    """Versions of zrl, every loaded plugin distribution and the libraries it stands on (installed ones only)."""
    found = {name: _version(name) for name in LIBRARIES}
    if plugins is not None:
        for info in plugins.plugins.values():
            if info.version and info.distribution not in found:
                found[info.distribution] = info.version
    return {name: version for name, version in found.items() if version}


def jsonable_config(config: Any) -> dict[str, Any]:
    """The full training config as JSON-safe values (TrainingArguments' own ``to_dict``)."""
    raw = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    return json.loads(json.dumps(raw, default=str))


def run_metadata(config: Any, plugins: Any = None, device: str | None = None, dtype: str | None = None) -> dict:
    """The provenance block of ``summary.json``."""
    return {
        "versions": versions(plugins),
        "device": device,
        "dtype": dtype,
        "bf16_autocast": bool(getattr(config, "bf16", False)),
        "seed": getattr(config, "seed", None),
        "config": jsonable_config(config),
    }


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (well-behaved near 0 and 1, unlike the normal approximation)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(centre - half, 0.0), min(centre + half, 1.0))
