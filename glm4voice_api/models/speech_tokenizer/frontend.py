"""The speech tokenizer's front end: any-rate mono audio -> 16 kHz 30 s windows -> Whisper log-mel features.

Token ids depend on how utterances are cut and padded, so this follows the reference `extract_speech_token`
exactly: 30 s windows without overlap, all windows of a batch padded to the longest one rounded up to one token
(1280 samples), per-utterance log-mel normalisation by transformers' WhisperFeatureExtractor.
"""

from __future__ import annotations

import numpy as np
import soxr
import torch
from transformers import WhisperFeatureExtractor

__all__ = ["SAMPLE_RATE", "SEGMENT_SAMPLES", "log_mel", "split_segments", "to_16k"]

SAMPLE_RATE = 16000
SEGMENT_SAMPLES = 30 * SAMPLE_RATE


def to_16k(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Validate one mono float waveform and resample it to 16 kHz (float32, 1-D)."""
    audio = np.asarray(waveform)
    if audio.ndim != 1:
        msg = f"expected a mono 1-D waveform, got shape {audio.shape}"
        raise ValueError(msg)
    if not np.issubdtype(audio.dtype, np.floating):
        # Integer PCM has no agreed scale here (int16 vs int32 full scale); the caller must convert.
        msg = f"expected a float waveform in [-1, 1], got dtype {audio.dtype}"
        raise ValueError(msg)
    if sample_rate <= 0:
        msg = f"sample_rate must be positive, got {sample_rate}"
        raise ValueError(msg)
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if sample_rate != SAMPLE_RATE and audio.size:
        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE).astype(np.float32, copy=False)
    return audio


def split_segments(items: list[tuple[np.ndarray, int]]) -> tuple[list[np.ndarray], list[int]]:
    """Utterances -> their 16 kHz 30 s windows, in order, and the index of the utterance each window belongs to."""
    segments: list[np.ndarray] = []
    owners: list[int] = []
    for idx, (waveform, sample_rate) in enumerate(items):
        audio = to_16k(waveform, sample_rate)
        for start in range(0, audio.shape[0], SEGMENT_SAMPLES):
            segments.append(audio[start : start + SEGMENT_SAMPLES])
            owners.append(idx)
    return segments, owners


def log_mel(
    feature_extractor: WhisperFeatureExtractor,
    segments: list[np.ndarray],
    device: torch.device,
    pad_to_multiple_of: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """16 kHz segments -> (log-mel [B, n_mels, F] float32, frame mask [B, F] int32), both on ``device``."""
    out = feature_extractor(
        segments,
        sampling_rate=SAMPLE_RATE,
        return_attention_mask=True,
        return_tensors="np",
        # Where the STFT runs matters at float-noise level; the reference ran it on the model's device.
        device=str(device),
        padding="longest",
        pad_to_multiple_of=pad_to_multiple_of,
    )
    features = torch.from_numpy(np.asarray(out["input_features"], dtype=np.float32)).to(device)
    mask = torch.from_numpy(np.asarray(out["attention_mask"], dtype=np.int32)).to(device)
    return features, mask
