"""Pytest fixtures for plugin test suites (imported by their ``conftest.py``); needs pytest."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random Llama and its offline-trained tokenizer, written once per test session."""
    from zrl_plugins.apps.testing import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))
