"""The wire between the host and a supervisor, in one place.

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON, both ways
(:data:`HEADER`). Docker multiplexes an attached exec's streams with an 8-byte header of its
own (:data:`MUX_HEADER`: stream id, size). The supervisor, which runs alone in the container
with the standard library only, keeps its own copy of :data:`HEADER`.

Example:
    >>> buffer = bytearray(frame(b'{"id": 1}') + frame(b'{"id": 2}')[:5])
    >>> list(bodies(buffer)), bytes(buffer)
    ([b'{"id": 1}'], b'\\x00\\x00\\x00\\t{')
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

HEADER = struct.Struct(">I")
MUX_HEADER = struct.Struct(">BxxxI")


def frame(body: bytes) -> bytes:
    """``body`` with its length header."""
    return HEADER.pack(len(body)) + body


def frames(buffer: bytearray) -> Iterator[bytes]:
    """Take the complete frames (header included) off the front of ``buffer``, one by one;
    a partial frame stays in it."""
    while len(buffer) >= HEADER.size:
        (size,) = HEADER.unpack_from(buffer)
        if len(buffer) < HEADER.size + size:
            return
        whole = bytes(buffer[: HEADER.size + size])
        del buffer[: HEADER.size + size]
        yield whole


def bodies(buffer: bytearray) -> Iterator[bytes]:
    """As :func:`frames`, without the headers."""
    for whole in frames(buffer):
        yield whole[HEADER.size :]
