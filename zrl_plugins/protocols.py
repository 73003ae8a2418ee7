"""Moved to :mod:`zrl_plugins.framework.protocols`; this module keeps existing imports working (plugins should use
:mod:`zrl_plugins.sdk`)."""

from .framework.protocols import *  # noqa: F403
