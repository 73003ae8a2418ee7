"""Verifiers for tests/test_boundaries.py's process-isolation tests: module-level, so that they pickle."""

from __future__ import annotations

import os
import time


def stuck_in_c(prompts, completions, **kwargs):
    """A hang no exception can end: a thread would keep it running; its worker process is killed."""
    if any("hang" in c for c in completions):
        time.sleep(10_000)  # C code: an exception raised into the thread waits for it to return
    return [float(len(c)) for c in completions]


def reports_its_process(prompts, completions, log_metric=None, **kwargs):
    if log_metric is not None:
        log_metric("verifier/pid", float(os.getpid()))
    return [float(os.getpid())] * len(completions)
