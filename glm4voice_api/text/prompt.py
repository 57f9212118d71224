"""The exact GLM-4-Voice prompt format (the official web demo's), built as token ids.

The seed builds a string and re-tokenizes it. We build ids segment by segment, which gives the same ids (the
HF tokenizer splits at added tokens and BPE-encodes the text between them), with one deliberate difference: text a
client sends is always encoded as ordinary text, so a user who types `<|user|>` cannot inject a special token.

One turn:  <|system|>\\n{SYSTEM}<|user|>\\n{INPUT}<|assistant|>streaming_transcription\\n
History:   the previous prompt + the previous reply's exact ids (text and audio, without the final <|user|>),
           then the next <|user|> block. `[gMASK]<sop>` once at the front, the system block once (first turn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from glm4voice_api.text.tokenizer import GLM4Tokenizer

# Verbatim from the seed's web_demo.py, grammar and the audio prompt's trailing space included: the model was
# trained on exactly these strings (custom system prompts mostly fail, GLM-4-Voice issue #163).
AUDIO_INPUT_SYSTEM_PROMPT = (
    "User will provide you with a speech instruction. Do it step by step. First, think about the instruction and "
    "respond in a interleaved manner, with 13 text token followed by 26 audio tokens. "
)
TEXT_INPUT_SYSTEM_PROMPT = (
    "User will provide you with a text instruction. Do it step by step. First, think about the instruction and "
    "respond in a interleaved manner, with 13 text token followed by 26 audio tokens."
)
ASSISTANT_METADATA = "streaming_transcription\n"


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class AudioPart:
    """Speech-tokenizer indices (0..16383) of one input clip."""

    tokens: tuple[int, ...]


@dataclass(frozen=True)
class UserMessage:
    parts: tuple[TextPart | AudioPart, ...]

    @property
    def has_audio(self) -> bool:
        return any(isinstance(p, AudioPart) for p in self.parts)


@dataclass(frozen=True)
class AssistantMessage:
    """An earlier reply: either its exact generated ids (from the audio store) or plain text."""

    token_ids: tuple[int, ...] | None = None
    text: str | None = None


@dataclass
class Prompt:
    token_ids: list[int]
    audio_tokens: int
    input_mode: Literal["audio", "text"]
    segments: list[str] = field(default_factory=list)

    @property
    def text_tokens(self) -> int:
        return len(self.token_ids) - self.audio_tokens


class PromptBuilder:
    """Builds GLM-4-Voice prompts from a conversation."""

    def __init__(self, tokenizer: GLM4Tokenizer) -> None:
        self.tok = tokenizer
        self.ids = tokenizer.ids

    def build(
        self,
        messages: list[UserMessage | AssistantMessage],
        *,
        system: str | None = None,
        input_mode: Literal["audio", "text"] | None = None,
    ) -> Prompt:
        """Token ids for the conversation, ending ready for the assistant's reply.

        A conversation that ends with an assistant message ends with that message left open, so the reply continues
        it; one with no message at all (a client's system message alone) is answered from the system block.

        `input_mode` picks the system prompt; by default the first user message decides, as in the seed, whose
        system block is written once on the first turn and kept. `system` (a client's own system message) is
        appended to the built-in prompt on a new line: the built-in sentence is what makes the model interleave.
        """
        if input_mode is None:
            first_user = next((m for m in messages if isinstance(m, UserMessage)), None)
            input_mode = "audio" if first_user is not None and first_user.has_audio else "text"
        system_text = AUDIO_INPUT_SYSTEM_PROMPT if input_mode == "audio" else TEXT_INPUT_SYSTEM_PROMPT
        if system:
            system_text = f"{system_text}\n{system}"
        ids = [self.ids.gmask, self.ids.sop, self.ids.system, *self.tok.encode("\n" + system_text)]
        audio = 0
        continued = bool(messages) and isinstance(messages[-1], AssistantMessage)
        for i, message in enumerate(messages):
            if isinstance(message, UserMessage):
                audio += self._append_user(ids, message)
            else:
                audio += self._append_assistant(ids, message, open_end=continued and i == len(messages) - 1)
        if not continued:
            ids += [self.ids.assistant, *self.tok.encode(ASSISTANT_METADATA)]
        return Prompt(token_ids=ids, audio_tokens=audio, input_mode=input_mode)

    def _append_user(self, ids: list[int], message: UserMessage) -> int:
        ids.append(self.ids.user)
        text = "\n"  # the newline after <|user|> joins the first text segment, as in the re-tokenized string
        audio = 0
        for part in message.parts:
            if isinstance(part, TextPart):
                text += part.text
                continue
            if text:
                ids += self.tok.encode(text)
                text = ""
            ids.append(self.ids.begin_of_audio)
            ids += [self.ids.audio_id(t) for t in part.tokens]
            ids.append(self.ids.end_of_audio)
            audio += len(part.tokens)
        if text:
            ids += self.tok.encode(text)
        return audio

    def _append_assistant(self, ids: list[int], message: AssistantMessage, *, open_end: bool = False) -> int:
        """An earlier reply; `open_end`: the reply being continued, kept exactly as given (nothing stripped)."""
        ids.append(self.ids.assistant)
        if message.token_ids is not None:
            ids += self.tok.encode(ASSISTANT_METADATA)
            reply = list(message.token_ids)
            # The seed strips the re-built history string; whole whitespace-only tokens at the end are what that
            # removes from a stored reply (its ids are otherwise kept exactly).
            while (
                not open_end and reply and not self.ids.is_audio(reply[-1]) and not self.tok.decode(reply[-1:]).strip()
            ):
                reply.pop()
            ids += reply
            return sum(1 for t in reply if self.ids.is_audio(t))
        text = message.text or ""
        ids += self.tok.encode(ASSISTANT_METADATA + (text.lstrip() if open_end else text.strip()))
        return 0


@dataclass
class SplitReply:
    """A reply's generated ids separated into text ids and speech-codebook indices."""

    text_ids: list[int] = field(default_factory=list)
    audio_tokens: list[int] = field(default_factory=list)
    all_ids: list[int] = field(default_factory=list)


class ReplySplitter:
    """Splits generated ids into text and audio (`id - <|audio_0|>`), dropping the end-of-turn id."""

    def __init__(self, tokenizer: GLM4Tokenizer) -> None:
        self.ids = tokenizer.ids
        self.reply = SplitReply()

    def feed(self, new_ids: list[int]) -> tuple[list[int], list[int]]:
        """Returns (text ids, audio indices) among `new_ids`; stop ids are not part of the reply."""
        text: list[int] = []
        audio: list[int] = []
        for token_id in new_ids:
            if token_id in self.ids.stop_ids:
                continue
            self.reply.all_ids.append(token_id)
            if self.ids.is_audio(token_id):
                audio.append(self.ids.audio_index(token_id))
            else:
                text.append(token_id)
        self.reply.text_ids += text
        self.reply.audio_tokens += audio
        return text, audio
