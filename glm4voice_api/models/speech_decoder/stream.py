"""One streaming decode session: token buffering, chunk schedule, bounded context and token2wav state.

All per-session state (history, crossfade tail, HiFT cache) lives in the ``DecoderStream`` and is freed on
``close()``. A stream never runs the model itself except through ``feed``; a scheduler that batches many
streams uses ``prepare`` -> ``decode_batch`` -> ``commit`` instead. The stream sees the decoder only through the
narrow ``ChunkDecoder`` protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Self

import numpy as np
import torch

from glm4voice_api.models.speech_decoder.chunks import ChunkRequest, ChunkResult, Voice
from glm4voice_api.models.speech_decoder.flow import NOISE_SEED

__all__ = ["MIN_CHUNK_TOKENS", "ChunkDecoder", "DecoderStream", "DecoderStreamConfig", "StreamClosedError"]

MIN_CHUNK_TOKENS = 6
"""A non-final chunk must yield more mel frames than the 34-frame overlap it holds back (5 tokens)."""

# Frames kept before the current context start: the frame offset of a fixed token offset can move by one
# frame between calls (the mel length formula floors), so pruning exactly at it could drop a needed frame.
_PRUNE_MARGIN_FRAMES = 8


class ChunkDecoder(Protocol):
    """What a stream needs from the decoder (``SpeechDecoder`` is one): geometry, voice prompts, noise, decoding."""

    @property
    def context_block(self) -> int:
        """Tokens per flow-encoder attention block: a bounded context starts on a multiple of it."""
        ...

    def mel_frames(self, num_tokens: int) -> int: ...

    def voice_prompt(self, voice: Voice | None) -> tuple[list[int], torch.Tensor]: ...

    def draw_noise(self, total_frames: int, generator: torch.Generator | None) -> torch.Tensor: ...

    def decode_batch(self, requests: list[ChunkRequest]) -> list[ChunkResult]: ...


class StreamClosedError(RuntimeError):
    """The stream was closed (or finished) and can no longer decode."""


@dataclass(frozen=True)
class DecoderStreamConfig:
    """Chunking policy of a stream.

    ``schedule``: tokens per chunk, in order; the last value repeats (web_demo.py uses 10, 20, 40: short
    first chunks for latency, longer ones for quality and cost). ``max_prompt_tokens``: at most this many
    earlier tokens (and their mel frames) are given to the flow as context, so the per-chunk cost stops
    growing with the response (the reference re-runs the whole history: quadratic). The voice prompt is
    always kept on top of it. None = unbounded, exactly the reference. ``rng_device``: where each chunk's
    seed-42 generator lives. "cpu" reproduces the reference's draws bit for bit; on a GPU server the decoder's
    device is used instead (same distribution, other numbers): HiFT's source noise is ~2.5M normals per 160-token
    chunk, which on the CPU cost more than the chunk's GPU work.
    """

    schedule: tuple[int, ...] = (10, 20, 40)
    max_prompt_tokens: int | None = None
    rng_device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.schedule or min(self.schedule) < MIN_CHUNK_TOKENS:
            msg = f"schedule must be non-empty with every step > 5 tokens, got {self.schedule}"
            raise ValueError(msg)
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            msg = f"max_prompt_tokens must be >= 1 or None, got {self.max_prompt_tokens}"
            raise ValueError(msg)


class DecoderStream:
    """Incremental token -> audio decoding with the token2wav (PR #86) algorithm.

    ``feed(tokens, final=False)`` returns the audio that became available (float32, may be empty).
    """

    def __init__(self, decoder: ChunkDecoder, voice: Voice | None, config: DecoderStreamConfig) -> None:
        self._decoder = decoder
        self.config = config
        self._voice_tokens, self._voice_mel = decoder.voice_prompt(voice)
        self._tokens: list[int] = []  # decoded history after the voice (from absolute index _token_base)
        self._mels: list[torch.Tensor] = []  # returned mels [80, M] (history from absolute frame _frame_base)
        self._token_base = 0
        self._frame_base = 0
        self._n_tokens = 0  # history tokens decoded so far (absolute)
        self._n_frames = 0  # history mel frames returned so far (absolute)
        self._tail: torch.Tensor | None = None
        self._cache_mel: torch.Tensor | None = None
        self._cache_source: torch.Tensor | None = None
        self._pending: list[int] = []
        self._step = 0
        self._final = False
        self._done = False
        self._closed = False
        self._inflight: ChunkRequest | None = None

    # -- public API ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def finished(self) -> bool:
        return self._done

    @property
    def pending_tokens(self) -> int:
        """Tokens buffered and not decoded yet."""
        return len(self._pending)

    @property
    def decoded_tokens(self) -> int:
        return self._n_tokens

    def feed(self, tokens: list[int] | np.ndarray = (), final: bool = False) -> np.ndarray:
        """Buffer tokens; decode every chunk the schedule allows (all remaining ones when ``final``)."""
        out = []
        request = self.prepare(tokens, final=final)
        while request is not None:
            out.append(self.commit(self._decoder.decode_batch([request])[0]))
            request = self.prepare(final=final)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def prepare(
        self, tokens: list[int] | np.ndarray = (), *, final: bool = False, size: int | None = None
    ) -> ChunkRequest | None:
        """Buffer tokens and return the next due chunk (None if none is due). Commit it before the next.

        ``size`` overrides the schedule for this chunk (a scheduler that sizes chunks from each stream's buffered
        audio): exactly ``size`` buffered tokens are decoded now, or None is returned while fewer are buffered.
        """
        self._check_open()
        if self._inflight is not None:
            msg = "a chunk is still in flight: commit() its result first"
            raise RuntimeError(msg)
        new = [int(t) for t in np.asarray(tokens, dtype=np.int64).reshape(-1)]
        if self._done and new:
            msg = "stream already finished"
            raise StreamClosedError(msg)
        if any(t < 0 for t in new):
            msg = "speech token ids must be >= 0"
            raise ValueError(msg)
        self._pending.extend(new)
        self._final = self._final or final
        if self._done:
            return None
        step = size if size is not None else self.config.schedule[min(self._step, len(self.config.schedule) - 1)]
        if step < MIN_CHUNK_TOKENS:
            msg = f"a chunk needs at least {MIN_CHUNK_TOKENS} tokens, got {step}"
            raise ValueError(msg)
        if self._final:
            # One final chunk with everything left: more context, fewer seams than splitting it.
            chunk, is_final = self._pending, True
            if not chunk and self._n_tokens == 0:
                self._done = True  # nothing was ever fed
                return None
        elif len(self._pending) >= step:
            chunk, is_final = self._pending[:step], False
        else:
            return None
        self._inflight = self._build_request(list(chunk), is_final)
        return self._inflight

    def commit(self, result: ChunkResult) -> np.ndarray:
        """Take a decoded chunk's result into the stream state and return its new audio."""
        self._check_open()
        req = result.request
        if req is not self._inflight:
            msg = "result does not belong to this stream's pending chunk"
            raise ValueError(msg)
        self._inflight = None
        del self._pending[: len(req.tokens)]
        self._step += 1
        self._tokens.extend(req.tokens)
        self._n_tokens += len(req.tokens)
        self._mels.append(result.mel)
        self._n_frames += int(result.mel.shape[1])
        self._tail, self._cache_mel, self._cache_source = result.overlap_tail, result.cache_mel, result.cache_source
        if req.final:
            self._done = True
            self._free()
        else:
            self._prune()
        return result.speech

    def close(self) -> None:
        """Free every piece of session state; later calls raise StreamClosedError."""
        self._closed = True
        self._inflight = None
        self._pending = []
        self._voice_tokens, self._voice_mel = [], torch.zeros(0, 0)
        self._free()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state_size(self) -> int:
        """Elements held in tensors and token lists (for tests and memory accounting)."""
        tensors = [*self._mels, self._voice_mel, self._tail, self._cache_mel, self._cache_source]
        return sum(t.numel() for t in tensors if t is not None) + len(self._tokens) + len(self._pending)

    # -- internals -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            msg = "decoder stream is closed"
            raise StreamClosedError(msg)

    def _free(self) -> None:
        self._tokens, self._mels = [], []
        self._tail = self._cache_mel = self._cache_source = None

    def _context_start(self, n_new: int) -> tuple[int, int]:
        """Absolute (token, frame) where the history context starts, honouring ``max_prompt_tokens``.

        Skipping s tokens drops d = mel(L) - mel(L - s) frames, so the chunk still gets exactly the frame
        count of a full-context call. s is a multiple of the encoder block so block boundaries stay put.
        """
        limit = self.config.max_prompt_tokens
        if limit is None or self._n_tokens <= limit:
            return 0, 0
        block = self._decoder.context_block
        total = len(self._voice_tokens) + self._n_tokens + n_new
        skip = math.ceil((self._n_tokens - limit) / block) * block
        while skip > 0:
            frames = self._decoder.mel_frames(total) - self._decoder.mel_frames(total - skip)
            if frames <= self._n_frames and skip >= self._token_base and frames >= self._frame_base:
                return skip, frames
            skip -= block
        return 0, 0

    def _build_request(self, chunk: list[int], final: bool) -> ChunkRequest:
        skip, frames = self._context_start(len(chunk))
        if skip < self._token_base or frames < self._frame_base:
            msg = "bounded context needs history that was already pruned"
            raise RuntimeError(msg)
        history_mel = (
            torch.cat(self._mels, dim=1) if self._mels else self._voice_mel.new_zeros(self._voice_mel.shape[0], 0)
        )
        if len(self._mels) > 1 or (self._mels and self._mels[0]._base is not None):
            # Keep the joined copy: a chunk's mel is a view of its whole pass's batch, which would otherwise stay
            # alive as long as the stream (unbounded context never prunes).
            self._mels = [history_mel]
        prompt_tokens = self._voice_tokens + self._tokens[skip - self._token_base :]
        prompt_mel = torch.cat([self._voice_mel, history_mel[:, frames - self._frame_base :]], dim=1)
        noise, generator = None, None
        if skip:
            # Draw the full-context noise and keep its tail, so the new frames get the same noise as an
            # unbounded call (and HiFT continues from the same generator state): only the context differs.
            generator = torch.Generator(device=self.config.rng_device).manual_seed(NOISE_SEED)
            total = self._decoder.mel_frames(len(self._voice_tokens) + self._n_tokens + len(chunk))
            noise = self._decoder.draw_noise(total, generator)[:, frames:]
        return ChunkRequest(
            noise=noise,
            generator=generator,
            rng_device=self.config.rng_device,
            tokens=chunk,
            prompt_tokens=prompt_tokens,
            prompt_mel=prompt_mel,
            final=final,
            overlap_tail=self._tail,
            cache_mel=self._cache_mel,
            cache_source=self._cache_source,
        )

    def _prune(self) -> None:
        """With bounded context, drop history that no later chunk can reach (keeps memory bounded too)."""
        if self.config.max_prompt_tokens is None:
            return
        skip, frames = self._context_start(0)
        frames = max(self._frame_base, frames - _PRUNE_MARGIN_FRAMES)
        block = self._decoder.context_block
        skip = max(self._token_base, skip - block)  # a later call may fall back by one block
        history_mel = torch.cat(self._mels, dim=1)
        self._mels = [history_mel[:, frames - self._frame_base :].clone()]
        self._tokens = self._tokens[skip - self._token_base :]
        self._token_base, self._frame_base = skip, frames
