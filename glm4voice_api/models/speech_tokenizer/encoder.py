"""WhisperVQEncoder: the GLM-4-Voice speech tokenizer network (log-mel in, 12.5 Hz codebook indices out).

Geometry is Whisper-large-v3's encoder, cut after the quantizer layer: causal convolutions, block-causal
self-attention, average pooling and a nearest-neighbour lookup in a learned codebook. Parameter names equal the
keys of the official `model.safetensors` (no prefix), so a state dict loads without any renaming.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The conv front end halves the 100 Hz mel rate; fixed by the architecture, not by config.json.
CONV_STRIDE = 2
MEL_FRAMES_PER_SECOND = 100
# HF Whisper never writes layer_norm_eps into config.json; nn.LayerNorm's default is what the reference used.
LAYER_NORM_EPS = 1e-5
# The quantizer's distance matrix is [rows, codebook_size]; chunking rows bounds its memory (16384 columns).
_VQ_ROWS_PER_CHUNK = 4096

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


@dataclass(frozen=True)
class WhisperVQConfig:
    """Sizes and switches of WhisperVQEncoder; `from_hf_config` reads the official config.json."""

    num_mel_bins: int = 128
    d_model: int = 1280
    num_heads: int = 20
    ffn_dim: int = 5120
    # Layers that are built and stored: config.json's encoder_layers is 32, but with quantize_encoder_only
    # everything after the quantizer is dropped, leaving quantize_position layers.
    num_layers: int = 16
    max_source_positions: int = 1500
    causal_conv: bool = True
    # Frames (at the layer's own rate) that see each other both ways; None means full bidirectional attention.
    block_size: int | None = 200
    pooling_kernel_size: int | None = 4
    pooling_type: str = "avg"
    pooling_position: int = 16
    quantize_position: int = 16
    codebook_size: int = 16384
    activation: str = "gelu"

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads != 0:
            msg = f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}"
            raise ValueError(msg)
        if self.quantize_position != self.num_layers:
            msg = f"quantize_position {self.quantize_position} must equal num_layers {self.num_layers} (encoder-only)"
            raise ValueError(msg)
        if self.pooling_kernel_size is not None and not 1 <= self.pooling_position <= self.quantize_position:
            msg = f"pooling_position {self.pooling_position} must lie in 1..quantize_position={self.quantize_position}"
            raise ValueError(msg)
        if self.pooling_type not in {"avg", "max"}:
            msg = f"pooling_type {self.pooling_type!r} is not supported (avg, max)"
            raise ValueError(msg)
        if self.activation not in _ACTIVATIONS:
            msg = f"activation_function {self.activation!r} is not supported ({', '.join(_ACTIVATIONS)})"
            raise ValueError(msg)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def frames_per_token(self) -> int:
        """Mel frames (100 Hz) per output token: 8 for the released model."""
        return CONV_STRIDE * (self.pooling_kernel_size or 1)

    @property
    def tokens_per_second(self) -> float:
        return MEL_FRAMES_PER_SECOND / self.frames_per_token

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> WhisperVQConfig:
        """Map the official config.json; raises KeyError for a missing key, ValueError for an unsupported value."""
        # Switches whose other settings change the network in ways this implementation does not model.
        required = {
            "quantize_encoder_only": True,
            "encoder_causal_attention": False,
            "quantize_causal_encoder": False,
            "scale_embedding": False,
        }
        for key, expected in required.items():
            if bool(hf[key]) != expected:
                msg = f"{key}={hf[key]!r} is not supported (only {expected!r})"
                raise ValueError(msg)
        if hf["quantize_vocab_size"] is None:
            msg = "quantize_vocab_size is null: an encoder without a quantizer yields no tokens"
            raise ValueError(msg)
        if hf["quantize_position"] > hf["encoder_layers"]:
            msg = f"quantize_position {hf['quantize_position']} exceeds encoder_layers {hf['encoder_layers']}"
            raise ValueError(msg)
        return cls(
            num_mel_bins=int(hf["num_mel_bins"]),
            d_model=int(hf["d_model"]),
            num_heads=int(hf["encoder_attention_heads"]),
            ffn_dim=int(hf["encoder_ffn_dim"]),
            num_layers=int(hf["quantize_position"]),
            max_source_positions=int(hf["max_source_positions"]),
            causal_conv=bool(hf["encoder_causal_convolution"]),
            block_size=hf["quantize_causal_block_size"],
            pooling_kernel_size=hf["pooling_kernel_size"],
            pooling_type=str(hf["pooling_type"]),
            pooling_position=int(hf["pooling_position"]),
            quantize_position=int(hf["quantize_position"]),
            codebook_size=int(hf["quantize_vocab_size"]),
            activation=str(hf["activation_function"]),
        )

    @classmethod
    def full(cls) -> WhisperVQConfig:
        """The released THUDM/glm-4-voice-tokenizer."""
        return cls()

    @classmethod
    def tiny(cls) -> WhisperVQConfig:
        """Test size, as conformance tiny_a: everything released except the widths and the layer count."""
        return cls(d_model=48, num_heads=4, ffn_dim=96, num_layers=2, pooling_position=2, quantize_position=2)


@dataclass
class WhisperVQOutput:
    """Result of one forward pass over a padded batch."""

    token_ids: Tensor  # [B, T_tok] int64, codebook rows
    token_mask: Tensor  # [B, T_tok] bool, True where the token starts inside real audio
    pre_vq: Tensor  # [B, T_tok, D], the vectors handed to the quantizer
    # (layer input, output of layer 0, output of layer 1, ...), each [B, T_layer, D]; only when asked for.
    hidden_states: tuple[Tensor, ...] | None = None


class CausalConv1d(nn.Conv1d):
    """Conv1d that pads only on the left, so a frame never sees the future (streaming-friendly)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride)
        self.left_pad = kernel_size - 1

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, C_in, T] -> [B, C_out, ceil(T / stride)]
        return super().forward(F.pad(x, (self.left_pad, 0)))


class EncoderSelfAttention(nn.Module):
    """Whisper multi-head self-attention; k_proj has no bias, as in every Whisper checkpoint."""

    def __init__(self, cfg: WhisperVQConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.num_heads = cfg.num_heads
        # Declaration order follows the checkpoint's state_dict order (k, v, q, out).
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d)
        self.q_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        # x: [B, T, D]; attn_mask: [B, 1, T, T] bool, True = may attend
        b, t, d = x.shape

        def heads(y: Tensor) -> Tensor:  # [B, T, D] -> [B, H, T, Dh]
            return y.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)

        # SDPA's default 1/sqrt(Dh) scale is the reference's (Whisper's SDPA path does not pre-scale q).
        out = F.scaled_dot_product_attention(
            heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x)), attn_mask=attn_mask
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    """Pre-LayerNorm Whisper encoder layer."""

    def __init__(self, cfg: WhisperVQConfig) -> None:
        super().__init__()
        self.self_attn = EncoderSelfAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(cfg.d_model, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.d_model)
        self.final_layer_norm = nn.LayerNorm(cfg.d_model, eps=LAYER_NORM_EPS)
        self.act = _ACTIVATIONS[cfg.activation]

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        # x: [B, T, D] -> [B, T, D]
        x = x + self.self_attn(self.self_attn_layer_norm(x), attn_mask)
        return x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))


def block_causal_mask(key_valid: Tensor, block_size: int | None) -> Tensor:
    """[B, T] bool key validity -> [B, 1, T, T] bool: i sees j if (j <= i or same block) and j is real audio.

    Blocks count from frame 0. A bool mask gives the same probabilities as the reference's additive finfo.min
    mask (masked scores underflow to exactly 0 either way; every row keeps frame 0) at a quarter of the memory.
    """
    t = key_valid.shape[1]
    pos = torch.arange(t, device=key_valid.device)
    if block_size is None:
        allowed = torch.ones(t, t, dtype=torch.bool, device=key_valid.device)
    else:
        block = pos // block_size
        allowed = (pos[None, :] <= pos[:, None]) | (block[None, :] == block[:, None])  # [T_q, T_k]
    return (allowed[None] & key_valid[:, None, :].bool())[:, None]


def vector_quantize(x: Tensor, codebook: Tensor) -> Tensor:
    """Nearest codebook row per vector: x [N, D], codebook [K, D] -> [N] int64.

    The distance is the reference's ||c||^2 + ||x||^2 - 2 x.c (one addmm), not a cdist: token ids must match the
    reference even where two rows are nearly tied. It runs in float32 whatever the model dtype, because bf16
    distances (values in the hundreds, 8-bit mantissa) would flip many tokens away from the fp32 reference.
    """
    x = x.float()
    codebook = codebook.float()
    c_sqr = codebook.pow(2).sum(dim=1)  # [K]
    ids = []
    for rows in x.split(_VQ_ROWS_PER_CHUNK):
        dist = torch.addmm(c_sqr + rows.pow(2).sum(dim=1, keepdim=True), rows, codebook.t(), beta=1.0, alpha=-2.0)
        ids.append(dist.argmin(dim=1))  # ties resolve to the first row, as torch.min does in the reference
    return torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long, device=x.device)


class WhisperVQEncoder(nn.Module):
    """Log-mel [B, n_mels, F] at 100 Hz -> codebook indices at 100 / (2 * pooling_kernel_size) Hz."""

    def __init__(self, cfg: WhisperVQConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        if cfg.causal_conv:
            self.conv1: nn.Conv1d = CausalConv1d(cfg.num_mel_bins, d, 3)
            self.conv2: nn.Conv1d = CausalConv1d(d, d, 3, stride=CONV_STRIDE)
        else:
            self.conv1 = nn.Conv1d(cfg.num_mel_bins, d, 3, padding=1)
            self.conv2 = nn.Conv1d(d, d, 3, stride=CONV_STRIDE, padding=1)
        self.embed_positions = nn.Embedding(cfg.max_source_positions, d)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_layers))
        self.codebook = nn.Embedding(cfg.codebook_size, d)
        # Added after the quantizer in the reference, where no layer reads it any more; kept so the official
        # state dict loads strictly (a missing key must stay an error).
        pooled_positions = cfg.max_source_positions // (cfg.pooling_kernel_size or 1)
        self.embed_positions2 = nn.Embedding(pooled_positions, d)

    def _pool(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        # x: [B, T, D], valid: [B, T] -> [B, ceil(T / k), D], [B, ceil(T / k)]
        k = self.config.pooling_kernel_size or 1
        x = x.transpose(1, 2)
        # Zero frames (not edge copies) complete the last window, and they count in the average, as in the reference.
        x = F.pad(x, (0, -x.shape[-1] % k))
        pool = F.avg_pool1d if self.config.pooling_type == "avg" else F.max_pool1d
        return pool(x, k, k).transpose(1, 2), valid[:, ::k]

    def forward(self, features: Tensor, frame_mask: Tensor, *, output_hidden_states: bool = False) -> WhisperVQOutput:
        """features: [B, n_mels, F] log-mel, F even; frame_mask: [B, F], 1 where the frame starts in real audio."""
        cfg = self.config
        n_frames = features.shape[-1]
        if n_frames > cfg.max_source_positions * CONV_STRIDE:
            msg = f"{n_frames} mel frames exceed the model's {cfg.max_source_positions * CONV_STRIDE} (30 s)"
            raise ValueError(msg)
        x = F.gelu(self.conv1(features))  # [B, D, F]
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # [B, T50, D]
        x = x + self.embed_positions.weight[: x.shape[1]]
        valid = frame_mask[:, ::CONV_STRIDE].bool()  # [B, T50]
        block = cfg.block_size
        mask = block_causal_mask(valid, block)
        hidden: list[Tensor] = [x]
        for idx, layer in enumerate(self.layers):
            x = layer(x, mask)
            if output_hidden_states:
                hidden.append(x)
            if cfg.pooling_kernel_size is not None and idx + 1 == cfg.pooling_position:
                x, valid = self._pool(x, valid)
                # Later layers run at the pooled rate, where the same time span is k times fewer frames.
                block = None if block is None else block // cfg.pooling_kernel_size
                mask = block_causal_mask(valid, block)
        ids = vector_quantize(x.reshape(-1, x.shape[-1]), self.codebook.weight).view(x.shape[:2])  # [B, T_tok]
        return WhisperVQOutput(
            token_ids=ids, token_mask=valid, pre_vq=x, hidden_states=tuple(hidden) if output_hidden_states else None
        )
