import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from zrl_plugins.testing import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))
