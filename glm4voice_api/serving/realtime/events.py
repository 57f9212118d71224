"""Server events of the Realtime API as plain dicts, in the GA shapes or, for a beta client, the beta ones.

A client that connects with `OpenAI-Beta: realtime=v1` (the SDK's `client.beta.realtime`) gets the beta names
(`response.audio.delta`, `conversation.item.created`, ...) and the beta session object; everyone else the GA ones.
"""

from __future__ import annotations

import uuid
from typing import Any

from glm4voice_api.errors import APIError

# GA name -> beta name, for the events whose name changed.
_BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}
# GA content types of assistant items -> beta.
_BETA_CONTENT = {"output_audio": "audio", "output_text": "text"}


class ClientGone(Exception):
    """Sending failed: the client has gone."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


class EventFactory:
    """Builds server events with fresh event ids, named for the client's protocol version."""

    def __init__(self, beta: bool) -> None:
        self.beta = beta

    def __call__(self, type_: str, **fields: Any) -> dict:
        name = _BETA_NAMES.get(type_, type_) if self.beta else type_
        return {"event_id": new_id("event"), "type": name, **fields}

    def error(self, error: APIError, client_event_id: str | None = None) -> dict:
        return self(
            "error",
            error={
                "type": error.type,
                "code": error.code,
                "message": error.message,
                "param": error.param,
                "event_id": client_event_id,
            },
        )

    def item_added(self, item: dict, previous_item_id: str | None) -> list[dict]:
        """A new item: `conversation.item.added` (GA; `.done` follows when complete) or `.created` (beta)."""
        if self.beta:
            return [self("conversation.item.created", previous_item_id=previous_item_id, item=item)]
        return [self("conversation.item.added", previous_item_id=previous_item_id, item=item)]

    def item_done(self, item: dict, previous_item_id: str | None) -> list[dict]:
        if self.beta:
            return []
        return [self("conversation.item.done", previous_item_id=previous_item_id, item=item)]

    def content_type(self, ga_type: str) -> str:
        return _BETA_CONTENT.get(ga_type, ga_type) if self.beta else ga_type
