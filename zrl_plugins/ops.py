"""Moved to :mod:`zrl_plugins.framework.ops`; this module keeps existing imports working (plugins should use
:mod:`zrl_plugins.sdk`)."""

from .framework.ops import *  # noqa: F403
