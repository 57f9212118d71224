"""Load the official `glm-4-voice-tokenizer` folder (config.json, model.safetensors, preprocessor_config.json).

The files are read unchanged; any mismatch with what the encoder expects raises CheckpointFormatError naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from transformers import WhisperFeatureExtractor

from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.models.speech_tokenizer.encoder import WhisperVQConfig, WhisperVQEncoder
from glm4voice_api.models.speech_tokenizer.frontend import SAMPLE_RATE
from glm4voice_api.models.speech_tokenizer.tokenizer import SpeechTokenizer
from glm4voice_api.models.state_dict import check_state_dict, shapes_of

__all__ = ["CONFIG_FILE", "IGNORED_KEYS", "PREPROCESSOR_FILE", "WEIGHTS_FILE", "load_speech_tokenizer"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
# Training-only EMA state of the codebook: stored in the released file, never read at inference.
IGNORED_KEYS = frozenset({"ema_count", "ema_weight"})
# The codebook stays float32 in a half-precision model: the VQ's distances run in float32 (`vector_quantize`), and a
# rounded codebook would move them for every token, where half-precision layers move only the encoder's output.
FP32_KEYS = frozenset({"codebook.weight"})


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
    state = _read_weights(weights, shapes_of(model.state_dict()), torch.device(device), dtype)
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
            what = f"{path}: does not match config.json's WhisperVQEncoder"
            check_state_dict(found, expected, what=what, ignored=IGNORED_KEYS)
            return {key: f.get_tensor(key).to(torch.float32 if key in FP32_KEYS else dtype) for key in expected}
    except (SafetensorError, OSError) as exc:
        msg = f"{path}: not a readable safetensors file ({exc})"
        raise CheckpointFormatError(msg) from exc
