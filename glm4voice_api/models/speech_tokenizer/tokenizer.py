"""Waveform -> GLM-4-Voice speech token ids, computed the way the reference `extract_speech_token` does."""

from __future__ import annotations

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
        with torch.inference_mode():
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
