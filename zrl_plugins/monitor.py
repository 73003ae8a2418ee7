"""Moved to :mod:`zrl_plugins.apps.monitor`; this module keeps existing imports working (plugins should use
:mod:`zrl_plugins.sdk`)."""

from .apps.monitor import *  # noqa: F403
