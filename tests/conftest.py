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


def char_count_reward(prompts, completions, **kwargs):
    """A reward with variance on a random model: how many digits the completion writes."""
    return [float(sum(ch.isdigit() for ch in c)) + 0.1 * len(c) for c in completions]


# Settings shared by every tiny-model trainer in the tests (TRL's and zrl's alike).
TINY_TRAINING = dict(
    per_device_train_batch_size=8,
    num_generations=4,
    max_completion_length=8,
    max_steps=2,
    logging_steps=1,
    report_to=[],
    use_cpu=True,
    bf16=False,
    save_strategy="no",
    gradient_checkpointing=False,
    seed=0,
    learning_rate=1e-2,
    temperature=1.0,
)


def tiny_config(tmp_path, **overrides):
    from zrl_plugins import ZRLConfig

    return ZRLConfig(**{"output_dir": str(tmp_path / "out"), **TINY_TRAINING, **overrides})
