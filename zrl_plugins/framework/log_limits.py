"""Bounded log lines: a data set value (a gold answer, a prompt, a completion) can be megabytes, and a warning that
quotes it whole floods the log and the terminal."""

from __future__ import annotations

import logging

MAX_QUOTED_CHARS = 300
MAX_MESSAGE_CHARS = 4000


def shorten(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and tail around a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    keep = max(limit // 2, 1)
    return f"{text[:keep]}…[{len(text) - 2 * keep} characters cut]…{text[-keep:]}"


class ShortenLongMessages(logging.Filter):
    """Cuts the middle out of log messages longer than ``limit`` (e.g. TRL's warning that quotes a row's columns
    when no reward function scored it)."""

    def __init__(self, limit: int = MAX_MESSAGE_CHARS):
        super().__init__()
        self.limit = limit

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > self.limit:
            record.msg, record.args = shorten(message, self.limit), None
        return True


def bound_messages(logger_name: str, limit: int = MAX_MESSAGE_CHARS) -> None:
    """Install :class:`ShortenLongMessages` on a logger, once."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, ShortenLongMessages) for f in logger.filters):
        logger.addFilter(ShortenLongMessages(limit))
