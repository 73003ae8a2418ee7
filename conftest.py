"""Shared by every test suite in the repository (core ``tests/`` and ``plugins/*/tests``): offline settings and the
tiny-model fixture. Helpers to import live in ``tests/helpers.py`` (``from tests.helpers import ...``); pytest puts
this directory on ``sys.path`` because this file is here."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    """A tiny random Llama and its offline-trained tokenizer, written once per test session."""
    from zrl_plugins.apps.tiny_model import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))
