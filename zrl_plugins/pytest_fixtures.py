"""Moved to :mod:`zrl_plugins.apps.pytest_fixtures`; this module keeps existing imports working (plugins should use
:mod:`zrl_plugins.sdk`)."""

from .apps.pytest_fixtures import *  # noqa: F403
