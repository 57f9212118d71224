"""A Realtime conversation: its items with their exact token ids, the prompt built from them, truncation.

User audio items keep the speech tokenizer's tokens of what was committed; assistant items keep the reply's exact
generated ids (text and audio interleaved), so every new response's prompt holds precisely what was said, as
the chat route's `audio.id` history does. `truncate` cuts an answer to what the listener heard: its audio tokens
up to `audio_end_ms` (12.5 per second) and the text tokens interleaved before them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from glm4voice_api.errors import APIError, invalid_request, not_found
from glm4voice_api.text.prompt import AssistantMessage, AudioPart, Prompt, PromptBuilder, TextPart, UserMessage
from glm4voice_api.text.tokenizer import GLM4Tokenizer

AUDIO_TOKEN_MS = 80  # 12.5 speech tokens per second
MAX_ITEMS = 4096  # a bound on a session's memory: only the newest items fit a context anyway


@dataclass
class Item:
    id: str
    role: str
    """user, assistant or system."""
    content_type: str
    """GA content type: input_audio, input_text, output_audio or output_text."""
    speech_tokens: tuple[int, ...] = ()
    text: str | None = None
    reply_ids: list[int] | None = None
    """Assistant items made by a response: the exact generated ids (without the end-of-turn id)."""
    transcript: str | None = None
    status: str = "completed"
    audio_ms: int = 0
    """User audio: the committed audio's length; assistant audio: what the reply's audio tokens last."""
    speed: float = 1.0
    extra: dict = field(default_factory=dict)

    def render(self, events_content_type: str | None = None) -> dict:
        """The item object of the API (no audio bytes: the server keeps tokens, not waveforms)."""
        kind = events_content_type or self.content_type
        part: dict = {"type": kind}
        if self.content_type in ("input_text", "output_text"):
            part["text"] = self.text or ""
        elif self.transcript is not None:  # user audio has none: the model hears the audio, not a transcript
            part["transcript"] = self.transcript
        return {
            "id": self.id,
            "object": "realtime.item",
            "type": "message",
            "status": self.status,
            "role": self.role,
            "content": [part],
        }


class Conversation:
    def __init__(self, tokenizer: GLM4Tokenizer) -> None:
        self.tok = tokenizer
        self.builder = PromptBuilder(tokenizer)
        self.items: list[Item] = []

    def get(self, item_id: str, param: str = "item_id") -> Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise not_found(f"Item with item_id '{item_id}' not found.", param, code="item_not_found")

    def has(self, item_id: str) -> bool:
        return any(item.id == item_id for item in self.items)

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert after `previous_item_id` (None: at the end, `root`: at the start); returns the item before it."""
        if len(self.items) >= MAX_ITEMS:
            raise invalid_request(
                f"The conversation holds {MAX_ITEMS} items, the most a session keeps; delete some first.",
                "item",
                code="conversation_too_long",
            )
        if self.has(item.id):
            raise invalid_request(f"Item with id '{item.id}' already exists.", "item.id", code="duplicate_item_id")
        if previous_item_id is None:
            at = len(self.items)
        elif previous_item_id == "root":
            at = 0
        else:
            at = self.items.index(self.get(previous_item_id, "previous_item_id")) + 1
        self.items.insert(at, item)
        return self.items[at - 1].id if at > 0 else None

    def previous_id(self, item_id: str) -> str | None:
        index = self.items.index(self.get(item_id))
        return self.items[index - 1].id if index > 0 else None

    def delete(self, item_id: str) -> None:
        self.items.remove(self.get(item_id))

    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    # -- prompts -----------------------------------------------------------------------------------------------
    def build(self, items: list[Item], instructions: str) -> Prompt:
        system_parts = [instructions] if instructions else []
        messages: list[UserMessage | AssistantMessage] = []
        for item in items:
            if item.role == "system":
                system_parts.append(item.text or "")
            elif item.role == "user":
                part = (
                    AudioPart(item.speech_tokens) if item.content_type == "input_audio" else TextPart(item.text or "")
                )
                messages.append(UserMessage(parts=(part,)))
            elif item.reply_ids is not None:
                messages.append(AssistantMessage(token_ids=tuple(item.reply_ids)))
            else:
                messages.append(AssistantMessage(text=item.text if item.text is not None else item.transcript))
        if not messages or not isinstance(messages[-1], UserMessage):
            raise invalid_request(
                "There is no user input after the last response: add a user item (audio or "
                "text) before response.create.",
                None,
                code="no_user_input",
            )
        system = "\n".join(p for p in system_parts if p) or None
        return self.builder.build(messages, system=system)

    def fit(self, instructions: str, max_len: int, reserve: int, allow_drop: bool) -> tuple[Prompt, list[Item]]:
        """The prompt of the whole conversation; while it leaves fewer than `reserve` tokens for the reply, the
        oldest items are dropped (returned, so the caller can remove them and tell the client)."""
        items = list(self.items)
        dropped: list[Item] = []
        while True:
            prompt = self.build(items, instructions)
            if len(prompt.token_ids) + reserve <= max_len:
                return prompt, dropped
            droppable = [i for i in items if i.role != "system"]
            if not allow_drop or len(droppable) <= 1:
                raise APIError(
                    f"The conversation ({len(prompt.token_ids)} tokens) leaves no room for a reply of {reserve} "
                    f"tokens in this model's context of {max_len} tokens.",
                    code="context_length_exceeded",
                )
            # Drop the oldest turn, and any assistant items left leading, so the prompt starts with a user turn.
            first = droppable[0]
            items.remove(first)
            dropped.append(first)
            while (rest := [i for i in items if i.role != "system"]) and rest[0].role == "assistant" and len(rest) > 1:
                items.remove(rest[0])
                dropped.append(rest[0])

    # -- truncation --------------------------------------------------------------------------------------------
    def truncate(self, item_id: str, content_index: int, audio_end_ms: int) -> None:
        item = self.get(item_id)
        if item.role != "assistant" or item.content_type != "output_audio":
            raise invalid_request("Only assistant audio items can be truncated.", "item_id", code="invalid_item")
        if content_index != 0:
            raise invalid_request(f"Item '{item_id}' has no content_index {content_index}.", "content_index")
        if audio_end_ms > item.audio_ms:
            raise invalid_request(
                f"audio_end_ms ({audio_end_ms}) is longer than the item's audio ({item.audio_ms} ms).", "audio_end_ms"
            )
        if item.reply_ids is None:
            return
        ids = self.tok.ids
        keep_audio = math.ceil(audio_end_ms * item.speed / AUDIO_TOKEN_MS)
        kept: list[int] = []
        count = 0
        for token in item.reply_ids:
            if ids.is_audio(token):
                if count == keep_audio:
                    break
                count += 1
            kept.append(token)
        while kept and not ids.is_audio(kept[-1]):  # text after the last heard audio was never spoken
            kept.pop()
        item.reply_ids = kept
        item.transcript = self.tok.decode([t for t in kept if not ids.is_audio(t)])
        item.audio_ms = audio_end_ms


def audio_ms_of(tokens: int, speed: float) -> int:
    """Playback length of `tokens` speech tokens at `speed`."""
    return int(tokens * AUDIO_TOKEN_MS / speed)
