"""Moved to :mod:`zrl_plugins.framework.plugins`; this module keeps existing imports working (plugins should use
:mod:`zrl_plugins.sdk`)."""

from .framework.plugins import *  # noqa: F403
