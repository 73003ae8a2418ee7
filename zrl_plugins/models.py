"""Moved to :mod:`zrl_plugins.apps.models`; this module keeps existing imports working (plugins should use
:mod:`zrl_plugins.sdk`)."""

from .apps.models import *  # noqa: F403
