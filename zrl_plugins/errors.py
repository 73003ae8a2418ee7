"""Moved to :mod:`zrl_plugins.framework.errors`; this module keeps existing imports working (plugins should use
:mod:`zrl_plugins.sdk`)."""

from .framework.errors import *  # noqa: F403
