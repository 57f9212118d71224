"""Waveform -> GLM-4-Voice speech token ids, computed the way the reference `extract_speech_token` does."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from transformers import WhisperFeatureExtractor

from glm4voice_api.models.speech_tokenizer.encoder import WhisperVQEncoder
from glm4voice_api.models.speech_tokenizer.frontend import log_mel, split_segments

__all__ = ["MAX_SEGMENTS_PER_FORWARD", "SpeechTokenizer"]

# The reference runs at most this many 30 s windows per forward pass; kept so peak memory is bounded the same way.
MAX_SEGMENTS_PER_FORWARD = 128


class SpeechTokenizer:
    """A loaded WhisperVQEncoder plus its feature extractor. Not thread-safe: give it one owner thread."""

    def __init__(self, model: WhisperVQEncoder, feature_extractor: WhisperFeatureExtractor) -> None:
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.tokens_per_second: float = model.config.tokens_per_second
        # One token covers this many 16 kHz samples (1280); padding to it keeps every token fully defined.
        self.samples_per_token: int = feature_extractor.hop_length * model.config.frames_per_token
        self._stream: torch.cuda.Stream | None = None

    def use_own_stream(self, priority: int = -1) -> None:
        """Run on a CUDA stream of its own (no-op on CPU), for a tokenizer beside the LLM in vLLM's process.

        Why: on the default stream its kernels queue behind the LLM's steps in launch order, so at a 32-stream burst
        a 3 s question waited ~67 ms for ~10 ms of work (bench/results/GPU.md session 25). Every tensor of a call is
        made, used and freed inside that call on this stream (the weights are only read), so no memory crosses
        streams; the weights' load is waited for here, once.
        """
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._stream = torch.cuda.Stream(self.device, priority=priority)

    @property
    def device(self) -> torch.device:
        return self.model.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.conv1.weight.dtype

    def tokenize(self, waveform: np.ndarray, sample_rate: int) -> list[int]:
        """Mono float waveform at any rate -> token ids (12.5 per second)."""
        return self.tokenize_batch([(waveform, sample_rate)])[0]

    def tokenize_batch(self, items: list[tuple[np.ndarray, int]]) -> list[list[int]]:
        """Tokenize several utterances in one padded batch; same result as one `extract_speech_token` call."""
        segments, owners = split_segments(items)
        tokens: list[list[int]] = [[] for _ in items]
        on_stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with torch.inference_mode(), on_stream:
            for first in range(0, len(segments), MAX_SEGMENTS_PER_FORWARD):
                chunk = slice(first, first + MAX_SEGMENTS_PER_FORWARD)
                features, frame_mask = self.log_mel(segments[chunk])
                out = self.model(features.to(self.dtype), frame_mask)
                ids, keep = out.token_ids.cpu(), out.token_mask.cpu()
                for row, owner in enumerate(owners[chunk]):
                    tokens[owner].extend(ids[row][keep[row]].tolist())
        return tokens

    def log_mel(self, segments: list[np.ndarray], *, pad_to_token: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz segments -> (log-mel [B, n_mels, F] float32, frame mask [B, F] int32), both on the model device.

        pad_to_token=False pads only to the longest segment (F = samples // 160); the model needs True.
        """
        pad = self.samples_per_token if pad_to_token else None
        return log_mel(self.feature_extractor, segments, self.device, pad)
