from __future__ import annotations

import pytest


@pytest.fixture
def fresh_pm():
    """A plugin manager of its own (built-ins + installed entry points), not the process-wide one."""
    from zrl_plugins.framework.plugins import ZRLPluginManager

    return ZRLPluginManager()


@pytest.fixture
def arithmetic_dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": f"What is {a} + {a + 1}?", "answer": str(2 * a + 1)} for a in range(16)])
