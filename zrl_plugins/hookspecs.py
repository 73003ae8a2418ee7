"""Moved to :mod:`zrl_plugins.framework.hookspecs`; this module keeps existing imports working (plugins should use
:mod:`zrl_plugins.sdk`)."""

from .framework.hookspecs import *  # noqa: F403
