"""Random-weight glm-4-voice-tokenizer folders in the exact official file format, for tests and benchmarks.

The folder holds what THUDM/glm-4-voice-tokenizer holds (config.json with the released keys, model.safetensors with
the real key names including the EMA buffers, the released preprocessor_config.json), so every loader path is
exercised without the 1.46 GB download. The weights are noise: the tokens mean nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import WhisperFeatureExtractor

from glm4voice_api.models.speech_tokenizer.encoder import WhisperVQConfig, WhisperVQEncoder
from glm4voice_api.models.speech_tokenizer.frontend import SAMPLE_RATE
from glm4voice_api.models.speech_tokenizer.loader import CONFIG_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE
from glm4voice_api.models.speech_tokenizer.tokenizer import SpeechTokenizer

NOTE_KEY = "_glm4voice_api_note"
NOTE = "random weights, not the real model"
# Spread of biases, norm offsets and the noise added to the positional tables (same recipe as conformance tiny_a).
_OFFSET_STD = 0.1
_CALIBRATION_SECONDS = 6.0

_RELEASED_CONFIG: dict[str, Any] = {
    "activation_dropout": 0.0,
    "activation_function": "gelu",
    "apply_spec_augment": False,
    "architectures": ["WhisperVQEncoder"],
    "attention_dropout": 0.0,
    "begin_suppress_tokens": [220, 50257],
    "bos_token_id": 50257,
    "classifier_proj_size": 256,
    "d_model": 1280,
    "decoder_attention_heads": 20,
    "decoder_ffn_dim": 5120,
    "decoder_layerdrop": 0.0,
    "decoder_layers": 32,
    "decoder_start_token_id": 50258,
    "dropout": 0.0,
    "encoder_attention_heads": 20,
    "encoder_causal_attention": False,
    "encoder_causal_convolution": True,
    "encoder_ffn_dim": 5120,
    "encoder_layerdrop": 0.0,
    "encoder_layers": 32,
    "eos_token_id": 50257,
    "init_std": 0.02,
    "is_encoder_decoder": True,
    "mask_feature_length": 10,
    "mask_feature_min_masks": 0,
    "mask_feature_prob": 0.0,
    "mask_time_length": 10,
    "mask_time_min_masks": 2,
    "mask_time_prob": 0.05,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "median_filter_width": 7,
    "model_type": "whisper",
    "num_hidden_layers": 32,
    "num_mel_bins": 128,
    "pad_token_id": 50256,
    "pooling_kernel_size": 4,
    "pooling_position": 16,
    "pooling_type": "avg",
    "quantize_causal_block_size": 200,
    "quantize_causal_encoder": False,
    "quantize_commit_coefficient": 0.25,
    "quantize_ema_decay": 0.99,
    "quantize_encoder_only": True,
    "quantize_loss_scale": 10.0,
    "quantize_position": 16,
    "quantize_restart_interval": 100,
    "quantize_vocab_size": 16384,
    "scale_embedding": False,
    "skip_language_detection": True,
    "torch_dtype": "float32",
    "transformers_version": "4.44.1",
    "use_cache": True,
    "use_weighted_layer_sum": False,
    "vocab_size": 51866,
}

_RELEASED_PREPROCESSOR: dict[str, Any] = {
    "chunk_length": 30,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "WhisperProcessor",
    "return_attention_mask": False,
    "sampling_rate": 16000,
}


def released_hf_config() -> dict[str, Any]:
    """The released tokenizer config.json as a fresh dict."""
    return json.loads(json.dumps(_RELEASED_CONFIG))


def released_preprocessor_config() -> dict[str, Any]:
    """The released preprocessor_config.json as a fresh dict."""
    return dict(_RELEASED_PREPROCESSOR)


def hf_config_for(cfg: WhisperVQConfig) -> dict[str, Any]:
    """A config.json with every released key whose sizes describe `cfg` (inverse of from_hf_config)."""
    hf = released_hf_config()
    # The release keeps half of its 32 encoder layers; the unused decoder fields mirror the encoder's sizes.
    hf.update(
        d_model=cfg.d_model,
        encoder_attention_heads=cfg.num_heads,
        decoder_attention_heads=cfg.num_heads,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        encoder_layers=2 * cfg.num_layers,
        num_hidden_layers=2 * cfg.num_layers,
        decoder_layers=2 * cfg.num_layers,
        num_mel_bins=cfg.num_mel_bins,
        max_source_positions=cfg.max_source_positions,
        encoder_causal_convolution=cfg.causal_conv,
        quantize_causal_block_size=cfg.block_size,
        pooling_kernel_size=cfg.pooling_kernel_size,
        pooling_type=cfg.pooling_type,
        pooling_position=cfg.pooling_position,
        quantize_position=cfg.quantize_position,
        quantize_vocab_size=cfg.codebook_size,
        activation_function=cfg.activation,
    )
    return hf


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positional table [length, channels] (sin half, then cos half), the base of random init."""
    log_inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-log_inc * torch.arange(channels // 2, dtype=torch.float32))
    angle = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


@torch.no_grad()
def init_random_weights(model: WhisperVQEncoder, generator: torch.Generator) -> None:
    """Seeded noise of sensible scale, drawn only from `generator` (the global RNG is never touched).

    Matrices ~ N(0, 1/fan_in) keep activations O(1) through the layers, so pooled vectors and tokens vary with the
    input; the codebook gets N(0, 1) here and is usually replaced by `calibrate_codebook`.
    """

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)

    modules = dict(model.named_modules())
    for name, param in model.named_parameters():
        owner = modules[name.rpartition(".")[0]]
        if name.startswith("embed_positions"):
            value = sinusoids(*param.shape).to(generator.device) + _OFFSET_STD * randn(*param.shape)
        elif owner is model.codebook:
            value = randn(*param.shape)
        elif isinstance(owner, torch.nn.LayerNorm) and name.endswith("weight"):
            value = 1.0 + _OFFSET_STD * randn(*param.shape)
        elif name.endswith("bias"):
            value = _OFFSET_STD * randn(*param.shape)
        else:
            fan_in = param[0].numel()
            value = randn(*param.shape) / fan_in**0.5
        param.copy_(value.to(param.device, param.dtype))


def calibration_audio(seed: int, n: int = 3, seconds: float = _CALIBRATION_SECONDS) -> list[np.ndarray]:
    """Synthetic 16 kHz signals (log chirps with harmonics, amplitude modulation, noise, a quiet gap)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    signals = []
    for _ in range(n):
        f0, f1 = rng.uniform(80.0, 400.0), rng.uniform(400.0, 3000.0)
        period = rng.uniform(0.5, 2.0)
        phase = 2 * np.pi * f0 * period / np.log(f1 / f0) * ((f1 / f0) ** ((t % period) / period) - 1)
        tone = sum(rng.uniform(0.2, 1.0) / k * np.sin(k * phase) for k in (1, 2, 3))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 4.0) * t)
        x = 0.3 * tone * envelope + rng.uniform(0.005, 0.05) * rng.standard_normal(t.size)
        gap = int(rng.uniform(0.2, 0.8) * t.size)
        x[gap : gap + SAMPLE_RATE * 3 // 10] *= 1e-3
        signals.append(np.clip(x, -1.0, 1.0).astype(np.float32))
    return signals


@torch.no_grad()
def calibrate_codebook(tokenizer: SpeechTokenizer, audio: list[np.ndarray], generator: torch.Generator) -> None:
    """Draw codebook rows ~ N(mean, std) of the pre-VQ vectors of `audio`, so that tokens vary with the input.

    Rows of plain N(0, 1) noise sit far from the encoder's actual output cloud and a handful of them would win
    every lookup; rows matched to that cloud are each nearest for some inputs.
    """
    model = tokenizer.model
    features, frame_mask = tokenizer.log_mel(audio)
    out = model(features.to(tokenizer.dtype), frame_mask)
    vectors = out.pre_vq[out.token_mask].float()  # [N, D] real-audio tokens only
    mean, std = vectors.mean(dim=0), vectors.std(dim=0)
    noise = torch.randn(model.codebook.weight.shape, generator=generator, device=generator.device)
    model.codebook.weight.copy_((mean + std * noise.to(mean.device)).to(model.codebook.weight.dtype))


def write_tiny_speech_tokenizer(out_dir: Path, *, seed: int = 0, config: WhisperVQConfig | None = None) -> Path:
    """Write a random-weight tokenizer folder (default: the tiny preset) and return its path."""
    cfg = config or WhisperVQConfig.tiny()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = WhisperVQEncoder(cfg)
    model.to_empty(device="cpu")
    init_random_weights(model, generator)
    preprocessor = released_preprocessor_config()
    tokenizer = SpeechTokenizer(model, WhisperFeatureExtractor.from_dict(preprocessor))
    calibrate_codebook(tokenizer, calibration_audio(seed), generator)

    codebook = model.codebook.weight.detach()
    # EMA buffers first, as in the released file's state dict; at rest the EMA equals the codebook.
    state = {"ema_count": torch.ones(cfg.codebook_size), "ema_weight": codebook.clone()}
    state.update({key: t.detach().contiguous() for key, t in model.state_dict().items()})
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})

    hf = hf_config_for(cfg)
    hf[NOTE_KEY] = NOTE
    _write_json(out_dir / CONFIG_FILE, hf)
    _write_json(out_dir / PREPROCESSOR_FILE, preprocessor)
    return out_dir


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # Hugging Face's own layout (sorted keys, 2-space indent, trailing newline), byte-identical to the release.
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
