"""GLM-4 text tokenizer: tiktoken BPE over `tokenizer.model` plus the added tokens of `tokenizer_config.json`.

The official tokenizer is remote code (`tokenization_chatglm.py`) that breaks on new transformers releases, and vLLM
runs with `skip_tokenizer_init=True`, so we own tokenization. We read the official files unchanged:
- `tokenizer.model`: one `<base64 bytes> <rank>` line per BPE token;
- `tokenizer_config.json`: `added_tokens_decoder` maps ids to the special and audio tokens.

Special-token ids are never hard-coded: they come from `added_tokens_decoder`. Only if the GLM-4 core specials
(`<|endoftext|>` ... `<|end_of_video|>`) are absent there do we number them from `len(ranks)`, exactly as the remote
code does.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import tiktoken

from glm4voice_api.models.errors import CheckpointFormatError

# The GLM-4 pre-tokenizer regex (tokenization_chatglm.py).
GLM4_PAT_STR = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# The remote code numbers these from len(ranks) in this order when they are not in added_tokens_decoder.
GLM4_CORE_SPECIALS = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
)


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Read a tiktoken BPE file (`<base64> <rank>` per line)."""
    ranks: dict[bytes, int] = {}
    try:
        with path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    except FileNotFoundError as exc:
        raise CheckpointFormatError(f"missing tokenizer file {path}") from exc
    except ValueError as exc:
        raise CheckpointFormatError(f"{path}: line {lineno} is not '<base64> <rank>'") from exc
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointFormatError(f"{path}: ranks are not the contiguous range 0..{len(ranks) - 1}")
    return ranks


def read_added_tokens(config_path: Path, num_ranks: int) -> dict[str, int]:
    """Added tokens (content -> id) from tokenizer_config.json, with the GLM-4 core specials filled in if absent."""
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointFormatError(f"missing tokenizer file {config_path}") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(f"{config_path} is not valid JSON: {exc}") from exc
    added: dict[str, int] = {}
    for key, entry in config.get("added_tokens_decoder", {}).items():
        content = entry["content"] if isinstance(entry, dict) else str(entry)
        added[content] = int(key)
    for offset, content in enumerate(GLM4_CORE_SPECIALS):
        added.setdefault(content, num_ranks + offset)
    clash = [c for c, i in added.items() if i < num_ranks]
    if clash:
        raise CheckpointFormatError(f"{config_path}: added tokens {clash[:5]} collide with BPE ranks < {num_ranks}")
    return added


@dataclass(frozen=True)
class TokenIds:
    """The GLM-4-Voice ids the prompt builder and the output splitter need, resolved from the tokenizer files."""

    endoftext: int
    gmask: int
    sop: int
    system: int
    user: int
    assistant: int
    observation: int
    begin_of_audio: int
    end_of_audio: int
    audio_0: int
    audio_count: int
    num_text: int  # ordinary BPE ids are 0..num_text-1
    num_valid: int  # ids >= num_valid are embedding padding rows

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The ids that end a reply (the model ends a turn with `<|user|>`)."""
        return (self.endoftext, self.user, self.observation)

    def is_audio(self, token_id: int) -> bool:
        return self.audio_0 <= token_id < self.audio_0 + self.audio_count

    def audio_index(self, token_id: int) -> int:
        """Speech-codebook index (0..16383) of an audio token id."""
        return token_id - self.audio_0

    def audio_id(self, index: int) -> int:
        return self.audio_0 + index


class GLM4Tokenizer:
    """Encode/decode GLM-4 text; special tokens only enter the ids through the prompt builder, never from text."""

    def __init__(self, ranks: dict[bytes, int], added: dict[str, int]) -> None:
        self._added = dict(added)
        self._added_by_id = {i: c for c, i in added.items()}
        self._enc = tiktoken.Encoding(
            name="glm4", pat_str=GLM4_PAT_STR, mergeable_ranks=ranks, special_tokens=self._added
        )
        self.num_ranks = len(ranks)
        self.ids = self._resolve_ids()

    @classmethod
    def from_dir(cls, path: Path | str) -> GLM4Tokenizer:
        path = Path(path)
        ranks = read_tiktoken_ranks(path / "tokenizer.model")
        return cls(ranks, read_added_tokens(path / "tokenizer_config.json", len(ranks)))

    def token_id(self, content: str) -> int:
        try:
            return self._added[content]
        except KeyError as exc:
            raise CheckpointFormatError(f"tokenizer has no added token {content!r}") from exc

    def _resolve_ids(self) -> TokenIds:
        audio_0 = self.token_id("<|audio_0|>")
        count = 0
        while self._added.get(f"<|audio_{count}|>") == audio_0 + count:
            count += 1
        return TokenIds(
            endoftext=self.token_id("<|endoftext|>"),
            gmask=self.token_id("[gMASK]"),
            sop=self.token_id("<sop>"),
            system=self.token_id("<|system|>"),
            user=self.token_id("<|user|>"),
            assistant=self.token_id("<|assistant|>"),
            observation=self.token_id("<|observation|>"),
            begin_of_audio=self.token_id("<|begin_of_audio|>"),
            end_of_audio=self.token_id("<|end_of_audio|>"),
            audio_0=audio_0,
            audio_count=count,
            num_text=self.num_ranks,
            num_valid=max(self._added.values()) + 1,
        )

    def encode(self, text: str) -> list[int]:
        """Ordinary BPE encoding: text that looks like `<|user|>` stays text (no prompt injection)."""
        return self._enc.encode_ordinary(text)

    def decode_bytes(self, ids: list[int]) -> bytes:
        out = bytearray()
        for token_id in ids:
            if token_id < self.num_ranks:
                out += self._enc.decode_single_token_bytes(token_id)
            elif token_id in self._added_by_id:
                out += self._added_by_id[token_id].encode()
        return bytes(out)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def incremental_decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self)


class IncrementalDecoder:
    """Turns a stream of text ids into text pieces without splitting a UTF-8 character across pieces."""

    def __init__(self, tokenizer: GLM4Tokenizer) -> None:
        self._tok = tokenizer
        self._pending = b""

    def feed(self, ids: list[int]) -> str:
        data = self._pending + self._tok.decode_bytes(ids)
        cut = _complete_utf8_prefix(data)
        self._pending = data[cut:]
        return data[:cut].decode("utf-8", errors="replace")

    def flush(self) -> str:
        data, self._pending = self._pending, b""
        return data.decode("utf-8", errors="replace")


def _complete_utf8_prefix(data: bytes) -> int:
    """Length of the longest prefix that does not end inside a multi-byte UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if byte & 0x80 == 0:  # ASCII
            return len(data)
        needed = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
        return len(data) if back >= needed else len(data) - back
    return len(data)
