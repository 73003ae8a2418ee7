"""Moved to :mod:`zrl_plugins.apps.testing`; this module keeps existing imports working (plugins should use
:mod:`zrl_plugins.sdk`)."""

from .apps.testing import *  # noqa: F403
