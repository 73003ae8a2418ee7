from zrl_plugins.apps.pytest_fixtures import tiny_model_dir  # noqa: F401 - shared fixture
