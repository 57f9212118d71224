"""Base64 pieces of a byte stream that clients can join as strings.

The `openai` SDK's `chat.completions.stream(...)` helper builds `message.audio.data` by concatenating the base64
strings of `delta.audio.data`. A piece whose byte length is not a multiple of 3 ends in `=` padding, and the joined
string is then no longer valid base64 (lenient decoders drop everything after the first padding). So every piece
covers a whole number of 3-byte groups, and of samples (pcm16: 2 bytes), so that each piece also decodes on its own
to whole samples: the rest waits for the next piece, and `finish` sends what is left.
"""

from __future__ import annotations

import base64
import math


class Base64Pieces:
    """Feeds bytes, returns base64 strings each covering a multiple of `lcm(3, frame_bytes)` bytes."""

    def __init__(self, frame_bytes: int = 1) -> None:
        if frame_bytes < 1:
            msg = f"frame_bytes must be >= 1, got {frame_bytes}"
            raise ValueError(msg)
        self.unit = math.lcm(3, frame_bytes)
        self._carry = b""

    def feed(self, data: bytes) -> str:
        """The base64 of the whole units buffered so far ("" when less than one unit is waiting)."""
        data = self._carry + data
        whole = len(data) - len(data) % self.unit
        self._carry = data[whole:]
        return base64.b64encode(data[:whole]).decode() if whole else ""

    def finish(self) -> str:
        """The base64 of the remaining bytes (padded if need be: it is the last piece)."""
        rest, self._carry = self._carry, b""
        return base64.b64encode(rest).decode() if rest else ""
