"""Waveform -> GLM-4-Voice speech token ids, computed the way the reference `extract_speech_token` does.

The official `glm-4-voice-tokenizer` folder (config.json, model.safetensors, preprocessor_config.json) is read
unchanged. Token ids depend on how utterances are cut and padded, so that part follows the reference exactly:
30 s windows without overlap, all windows of all utterances in one batch padded to the longest window rounded up
to one token (1280 samples), per-utterance log-mel normalisation by WhisperFeatureExtractor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import torch
from safetensors import SafetensorError, safe_open
from transformers import WhisperFeatureExtractor

from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.models.whisper_vq import WhisperVQConfig, WhisperVQEncoder

SAMPLE_RATE = 16000
SEGMENT_SAMPLES = 30 * SAMPLE_RATE
# The reference runs at most this many 30 s windows per forward pass; kept so peak memory is bounded the same way.
MAX_SEGMENTS_PER_FORWARD = 128
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
# Training-only EMA state of the codebook: stored in the released file, never read at inference.
IGNORED_KEYS = frozenset({"ema_count", "ema_weight"})
_MAX_LISTED = 8


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
        segments: list[np.ndarray] = []
        owners: list[int] = []
        for idx, (waveform, sample_rate) in enumerate(items):
            audio = _to_16k(waveform, sample_rate)
            for start in range(0, audio.shape[0], SEGMENT_SAMPLES):
                segments.append(audio[start : start + SEGMENT_SAMPLES])
                owners.append(idx)
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
        out = self.feature_extractor(
            segments,
            sampling_rate=SAMPLE_RATE,
            return_attention_mask=True,
            return_tensors="np",
            # Where the STFT runs matters at float-noise level; the reference ran it on the model's device.
            device=str(self.device),
            padding="longest",
            pad_to_multiple_of=self.samples_per_token if pad_to_token else None,
        )
        features = torch.from_numpy(np.asarray(out["input_features"], dtype=np.float32)).to(self.device)
        mask = torch.from_numpy(np.asarray(out["attention_mask"], dtype=np.int32)).to(self.device)
        return features, mask


def _to_16k(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
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


def load_speech_tokenizer(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> SpeechTokenizer:
    """Load an official glm-4-voice-tokenizer folder; any mismatch raises CheckpointFormatError naming it."""
    folder = Path(path)
    hf_config = _read_json(folder / CONFIG_FILE)
    preprocessor = _read_json(folder / PREPROCESSOR_FILE)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        msg = f"{weights}: file not found (expected {WEIGHTS_FILE} in the tokenizer folder)"
        raise CheckpointFormatError(msg)
    try:
        cfg = WhisperVQConfig.from_hf_config(hf_config)
    except KeyError as exc:
        msg = f"{folder / CONFIG_FILE}: missing key {exc}"
        raise CheckpointFormatError(msg) from exc
    except (TypeError, ValueError) as exc:
        msg = f"{folder / CONFIG_FILE}: {exc}"
        raise CheckpointFormatError(msg) from exc
    feature_extractor = _feature_extractor(preprocessor, cfg, folder / PREPROCESSOR_FILE)

    # Built on meta so no memory is spent on init values that the checkpoint overwrites anyway.
    with torch.device("meta"):
        model = WhisperVQEncoder(cfg)
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    state = _read_weights(weights, expected, torch.device(device), dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(requires_grad=False)
    return SpeechTokenizer(model, feature_extractor)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        msg = f"{path}: file not found (expected {path.name} in the tokenizer folder)"
        raise CheckpointFormatError(msg)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"{path}: not readable JSON ({exc})"
        raise CheckpointFormatError(msg) from exc
    if not isinstance(data, dict):
        msg = f"{path}: expected a JSON object, got {type(data).__name__}"
        raise CheckpointFormatError(msg)
    return data


def _feature_extractor(preprocessor: dict[str, Any], cfg: WhisperVQConfig, path: Path) -> WhisperFeatureExtractor:
    kind = preprocessor.get("feature_extractor_type")
    if kind != "WhisperFeatureExtractor":
        msg = f"{path}: feature_extractor_type is {kind!r}, expected 'WhisperFeatureExtractor'"
        raise CheckpointFormatError(msg)
    # The model is trained on exactly this front end; a mismatch here would silently produce wrong tokens.
    checks = {"feature_size": cfg.num_mel_bins, "sampling_rate": SAMPLE_RATE, "hop_length": 160}
    for key, want in checks.items():
        if preprocessor.get(key) != want:
            msg = f"{path}: {key} is {preprocessor.get(key)!r}, expected {want}"
            raise CheckpointFormatError(msg)
    try:
        return WhisperFeatureExtractor.from_dict(preprocessor)
    except (TypeError, ValueError) as exc:
        msg = f"{path}: cannot build WhisperFeatureExtractor ({exc})"
        raise CheckpointFormatError(msg) from exc


def _read_weights(
    path: Path, expected: dict[str, tuple[int, ...]], device: torch.device, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Check every key and shape before reading any tensor, then load the expected ones onto device/dtype."""
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            found = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
            _check_keys(path, found, expected)
            return {key: f.get_tensor(key).to(dtype) for key in expected}
    except (SafetensorError, OSError) as exc:
        msg = f"{path}: not a readable safetensors file ({exc})"
        raise CheckpointFormatError(msg) from exc


def _check_keys(path: Path, found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected and key not in IGNORED_KEYS]
    wrong = [
        f"{key}: file {list(found[key])} vs expected {list(shape)}"
        for key, shape in expected.items()
        if key in found and found[key] != shape
    ]
    problems = [
        f"{label} ({len(items)}): {_listing(items)}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
        if items
    ]
    if problems:
        msg = f"{path}: does not match config.json's WhisperVQEncoder; " + "; ".join(problems)
        raise CheckpointFormatError(msg)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown if len(items) <= _MAX_LISTED else f"{shown}, ... and {len(items) - _MAX_LISTED} more"
