"""The Realtime API: live speech-to-speech sessions over a WebSocket (`GET /v1/realtime`)."""

from glm4voice_api.serving.realtime.service import CLIENT_SECRET_PREFIX, ServingRealtime
from glm4voice_api.serving.realtime.session import Channel

__all__ = ["CLIENT_SECRET_PREFIX", "Channel", "ServingRealtime"]
