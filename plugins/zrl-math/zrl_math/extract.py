"""Where the final answer is taken from in a completion. Linear-time scans only: completions can be huge or junk."""

from __future__ import annotations

import re
from typing import Literal

ExtractionMode = Literal["boxed", "answer_is", "last_number", "auto"]
EXTRACTION_MODES = ("boxed", "answer_is", "last_number", "auto")

# Only the tail of a completion is searched: final answers are at the end, and this bounds the work on 10⁵-char junk.
MAX_SCAN_CHARS = 8000
MAX_ANSWER_CHARS = 500

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"answer is[:\s]*", re.IGNORECASE)
_BRACE = re.compile(r"[{}]")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def boxed_spans(text: str) -> list[tuple[int, int | None]]:
    """``(start, end)`` of the contents of every ``\\boxed{...}`` / ``\\fbox{...}`` in order (``end`` is ``None`` for
    one whose braces never close), in one pass over ``text``: a stack of the open braces, each marked with the box
    it opens, if any. A brace preceded by a backslash is not counted."""
    openers = {m.end() - 1: i for i, m in enumerate(_BOXED.finditer(text))}  # position of a box's "{" -> its index
    spans: list[tuple[int, int | None]] = [(position + 1, None) for position in openers]
    stack: list[int] = []  # one entry per open brace: the index of the box it opens, or -1
    for match in _BRACE.finditer(text):
        i = match.start()
        if i in openers:
            stack.append(openers[i])
        elif i and text[i - 1] == "\\":
            continue
        elif match.group() == "{":
            stack.append(-1)
        elif stack:
            box = stack.pop()
            if box >= 0:
                spans[box] = (spans[box][0], i)
    return spans


def boxed_contents(text: str) -> list[str | None]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` in order; ``None`` for one whose braces never close."""
    return [None if end is None else text[start:end] for start, end in boxed_spans(text)]


def last_boxed(text: str) -> str | None:
    """Contents of the last balanced ``\\boxed{...}``, or ``None``."""
    tail = text[-MAX_SCAN_CHARS:]
    closed = [(start, end) for start, end in boxed_spans(tail) if end is not None]
    return tail[closed[-1][0] : closed[-1][1]] if closed else None


def answer_is(text: str) -> str | None:
    """What follows the last "the answer is" (up to the end of its line or sentence), or ``None``."""
    tail = text[-MAX_SCAN_CHARS:]
    matches = list(_ANSWER_IS.finditer(tail))
    if not matches:
        return None
    rest = tail[matches[-1].end() :].strip()
    line = re.split(r"\n|\.\s", rest, maxsplit=1)[0].strip()  # up to the end of the line or sentence
    line = re.sub(r"[.\s]+$", "", line)  # a sentence's full stop is not part of the answer
    line = line.strip("$ ").strip()
    return line or None


def last_number(text: str) -> str | None:
    """The last number in the completion, as written (thousands separators removed), or ``None``."""
    matches = _NUMBER.findall(text[-MAX_SCAN_CHARS:])
    return matches[-1].replace(",", "") if matches else None


EXTRACTORS = {"boxed": last_boxed, "answer_is": answer_is, "last_number": last_number}


def extract_answer(text: str, mode: ExtractionMode = "auto") -> str | None:
    """The final answer of ``text`` according to ``mode``; ``auto`` tries boxed, answer_is, last_number in order.

    Returns ``None`` when nothing can be extracted, or when the extracted answer is longer than
    ``MAX_ANSWER_CHARS`` (no real final answer is; verifying one would only burn time).
    """
    if mode not in EXTRACTION_MODES:
        raise ValueError(f"unknown extraction mode {mode!r}; choose one of {EXTRACTION_MODES}")
    if not isinstance(text, str) or not text:
        return None
    order = ("boxed", "answer_is", "last_number") if mode == "auto" else (mode,)
    for name in order:
        answer = EXTRACTORS[name](text)
        if answer is not None:
            return answer if len(answer) <= MAX_ANSWER_CHARS else None
    return None
