"""Errors raised by the audio I/O layer.

Every failure caused by user-supplied audio is an :class:`AudioError`. The serving layer maps it to the
OpenAI error envelope ``{"error": {message, type, param, code}}`` without matching on message text:
``code`` is machine-readable, ``message`` is for humans and names the problem precisely.
"""

from __future__ import annotations

EMPTY_AUDIO = "empty_audio"
INVALID_AUDIO = "invalid_audio"
UNSUPPORTED_FORMAT = "unsupported_format"
AUDIO_TOO_LONG = "audio_too_long"
AUDIO_TOO_LARGE = "audio_too_large"
INVALID_BASE64 = "invalid_base64"

# Only an oversize upload is "payload too large"; everything else is the client's malformed request.
_HTTP_STATUS = {AUDIO_TOO_LARGE: 413}


class AudioError(ValueError):
    """User-supplied audio was rejected, or an output format cannot be produced.

    Attributes:
        code: One of the module constants (``"empty_audio"``, ``"invalid_audio"``, ``"unsupported_format"``,
            ``"audio_too_long"``, ``"audio_too_large"``, ``"invalid_base64"``).
        param: The request parameter at fault, or ``None`` when the caller should fill in its own.
        message: A precise, human-readable explanation, e.g. ``"audio is 41.2 s long; the limit is 30.0 s"``.

    """

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param

    @property
    def status_code(self) -> int:
        """HTTP status the serving layer should answer with (413 for oversize input, otherwise 400)."""
        return _HTTP_STATUS.get(self.code, 400)

    def __repr__(self) -> str:
        return f"AudioError(code={self.code!r}, param={self.param!r}, message={self.message!r})"
