"""Length-prefixed pickle frames: the wire format between the grader and its worker processes.

A frame is an 8-byte big-endian length followed by that many bytes of pickle. Both ends are this package, started
from the same interpreter, so pickle is safe here (it never reads data from anywhere else).
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any, BinaryIO

_HEADER = struct.Struct(">Q")
# No real message comes near this; a larger length means the stream is not ours (e.g. something printed to it).
MAX_FRAME_BYTES = 1 << 30


class FrameError(Exception):
    """The byte stream is not a sequence of frames (corrupted, or written by something else)."""


def encode(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def write_frame(stream: BinaryIO, message: Any) -> None:
    """Write one frame and flush it (the other end waits for whole frames)."""
    stream.write(encode(message))
    stream.flush()


def read_frame_bytes(fd: int) -> bytes | None:
    """Blocking read of one frame's payload from a file descriptor; ``None`` at end of stream."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {length} bytes announced; the stream is corrupted")
    payload = _read_exactly(fd, length)
    if payload is None:
        raise FrameError("stream ended inside a frame")
    return payload


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, remaining = [], n
    while remaining:
        chunk = os.read(fd, remaining)
        if not chunk:
            if remaining == n:
                return None
            raise FrameError("stream ended inside a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class FrameReader:
    """Incremental decoder for a non-blocking reader: feed it whatever bytes arrived, get back complete messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > MAX_FRAME_BYTES:
                raise FrameError(
                    f"frame of {length} bytes announced (starts with {bytes(self._buffer[:16])!r}); the stream is "
                    "not ours"
                )
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            messages.append(pickle.loads(self._buffer[_HEADER.size : end]))
            del self._buffer[:end]
        return messages

    @property
    def partial(self) -> bool:
        """Whether bytes of an incomplete frame are waiting (at end of stream: the writer died mid-frame)."""
        return bool(self._buffer)
