"""The flow's token encoder: CosyVoice's ``BlockConformerEncoder`` as GLM-4-Voice configures it.

Linear input layer + LayerNorm, ESPnet relative positional encoding, ``normalize_before`` Transformer-XL
style relative-position attention (``pos_bias_u``/``pos_bias_v`` + ``rel_shift``) under a block-causal
mask, SiLU FFN, final ``after_norm``. No macaron FFN and no conv module (both off in the released config).
Module and parameter names follow the reference so ``flow.pt`` loads with ``strict=True``.
Dropout is omitted: the decoder always runs in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.models.speech_decoder.yaml_config import YamlObject, expect_class

__all__ = ["BlockConformerEncoder", "FlowEncoderConfig", "block_causal_mask", "rel_pos_embedding", "slice_tables"]

ENCODER_CLASS = "cosyvoice.transformer.encoder.BlockConformerEncoder"

# Options of the reference constructor that this implementation supports only with one value.
_FIXED_OPTIONS: dict[str, Any] = {
    "input_layer": "linear",
    "pos_enc_layer_type": "rel_pos_espnet",
    "selfattention_layer_type": "block_rel_selfattn",
    "normalize_before": True,
    "use_cnn_module": False,
    "macaron_style": False,
    "activation_type": "swish",
    "static_chunk_size": 0,
    "use_dynamic_chunk": False,
    "key_bias": True,
}


@dataclass(frozen=True)
class FlowEncoderConfig:
    """Sizes of the block-causal Conformer encoder (defaults = the released GLM-4-Voice decoder)."""

    input_size: int = 512
    output_size: int = 512
    attention_heads: int = 8
    linear_units: int = 2048
    num_blocks: int = 6
    block_size: int = 10
    layer_norm_eps: float = 1e-5

    @classmethod
    def full(cls) -> FlowEncoderConfig:
        return cls()

    @classmethod
    def tiny(cls) -> FlowEncoderConfig:
        return cls(input_size=48, output_size=48, attention_heads=4, linear_units=96, num_blocks=2)

    @classmethod
    def from_yaml(cls, obj: YamlObject) -> FlowEncoderConfig:
        expect_class(obj, ENCODER_CLASS, where="flow.encoder")
        for key, want in _FIXED_OPTIONS.items():
            if key in obj and obj[key] != want:
                msg = f"flow.encoder: unsupported {key}={obj[key]!r} (only {want!r} is implemented)"
                raise CheckpointFormatError(msg)
        defaults = cls()
        cfg = cls(
            input_size=int(obj.get("input_size", defaults.input_size)),
            output_size=int(obj.get("output_size", defaults.output_size)),
            attention_heads=int(obj.get("attention_heads", defaults.attention_heads)),
            linear_units=int(obj.get("linear_units", defaults.linear_units)),
            num_blocks=int(obj.get("num_blocks", defaults.num_blocks)),
            block_size=int(obj.get("block_size", defaults.block_size)),
        )
        if cfg.output_size % cfg.attention_heads:
            msg = f"flow.encoder: output_size {cfg.output_size} not divisible by {cfg.attention_heads} heads"
            raise CheckpointFormatError(msg)
        return cfg


def rel_pos_embedding(length: int, d_model: int, *, device: torch.device | None = None) -> torch.Tensor:
    """ESPnet relative positional table for relative distances L-1 .. -(L-1): [1, 2L-1, d_model].

    Computed exactly as ``EspnetRelPositionalEncoding.extend_pe`` (float32, same op order); entries only
    depend on the position, so building it for L instead of max_len=5000 gives the same values.
    """
    position = torch.arange(0, length, dtype=torch.float32, device=device).unsqueeze(1)  # [L, 1]
    div_term = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / d_model)
    )  # [D/2]
    pe_pos = torch.zeros(length, d_model, device=device)
    pe_neg = torch.zeros(length, d_model, device=device)
    pe_pos[:, 0::2] = torch.sin(position * div_term)
    pe_pos[:, 1::2] = torch.cos(position * div_term)
    pe_neg[:, 0::2] = torch.sin(-1 * position * div_term)
    pe_neg[:, 1::2] = torch.cos(-1 * position * div_term)
    # Positive distances reversed, then negative ones: the layout rel_shift expects.
    return torch.cat([torch.flip(pe_pos, [0]), pe_neg[1:]], dim=0).unsqueeze(0)


def block_causal_mask(length: int, block_size: int, *, device: torch.device | None = None) -> torch.Tensor:
    """[L, L] bool, True where query i may see key j: block(j) <= block(i), blocks counted from 0.

    The reference ORs a lower triangle with the query's own block; that is the same set.
    """
    block = torch.arange(length, device=device) // block_size  # [L]
    return block[None, :] <= block[:, None]


def slice_tables(tables: tuple[torch.Tensor, torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables of an L-token pass as views of (pos [1, 2N-1, D], mask [N, N]) of N >= L positions, sliced as
    `BlockConformerEncoder.position_tables` slices its cache (each entry depends on its position only)."""
    pos, mask = tables
    n = mask.shape[0]
    return pos[:, n - length : n + length - 1], mask[:length, :length]


def _rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Transformer-XL shift: [B, H, L, 2L-1] scores by relative slot -> [B, H, L, L] by key index."""
    b, h, t1, t2 = x.shape
    zero_pad = torch.zeros((b, h, t1, 1), device=x.device, dtype=x.dtype)
    x_padded = torch.cat([zero_pad, x], dim=-1).view(b, h, t2 + 1, t1)
    return x_padded[:, :, 1:].reshape(b, h, t1, t2)[:, :, :, : t2 // 2 + 1]


class RelPositionMultiHeadedAttention(nn.Module):
    """Relative-position MHA (``BlockRelPositionMultiHeadedAttention`` with the mask built outside)."""

    def __init__(self, n_head: int, n_feat: int) -> None:
        super().__init__()
        self.d_k = n_feat // n_head
        self.h = n_head
        # Own parameters are registered first so state_dict order matches the reference.
        self.pos_bias_u = nn.Parameter(torch.zeros(n_head, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(n_head, self.d_k))
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        # x: [B, L, D]; allowed: [B, L, L] bool; pos_emb: [1, 2L-1, D]
        b, length, _ = x.shape
        q = self.linear_q(x).view(b, length, self.h, self.d_k)  # [B, L, H, dk]
        k = self.linear_k(x).view(b, length, self.h, self.d_k).transpose(1, 2)  # [B, H, L, dk]
        v = self.linear_v(x).view(b, length, self.h, self.d_k).transpose(1, 2)  # [B, H, L, dk]
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, self.h, self.d_k).transpose(1, 2)  # [1, H, 2L-1, dk]
        q_u = (q + self.pos_bias_u).transpose(1, 2)  # [B, H, L, dk]
        q_v = (q + self.pos_bias_v).transpose(1, 2)  # [B, H, L, dk]
        matrix_ac = torch.matmul(q_u, k.transpose(-2, -1))  # [B, H, L, L]
        matrix_bd = torch.matmul(q_v, p.transpose(-2, -1))  # [B, H, L, 2L-1]
        if matrix_ac.shape != matrix_bd.shape:
            matrix_bd = _rel_shift(matrix_bd)
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.d_k)  # [B, H, L, L]
        blocked = ~allowed.unsqueeze(1)  # [B, 1, L, L]
        scores = scores.masked_fill(blocked, -float("inf"))
        attn = torch.softmax(scores, dim=-1).masked_fill(blocked, 0.0)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, length, self.h * self.d_k)  # [B, L, D]
        return self.linear_out(out)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, idim: int, hidden_units: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.w_2 = nn.Linear(hidden_units, idim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.nn.functional.silu(self.w_1(x)))


class ConformerEncoderLayer(nn.Module):
    """Pre-norm block: ``x += MHA(norm_mha(x))``, ``x += FFN(norm_ff(x))``."""

    def __init__(self, cfg: FlowEncoderConfig) -> None:
        super().__init__()
        d = cfg.output_size
        self.self_attn = RelPositionMultiHeadedAttention(cfg.attention_heads, d)
        self.feed_forward = PositionwiseFeedForward(d, cfg.linear_units)
        self.norm_ff = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.norm_mha = nn.LayerNorm(d, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), allowed, pos_emb)
        return x + self.feed_forward(self.norm_ff(x))


class _LinearInput(nn.Module):
    """``LinearNoSubsampling``: only ``out.0`` (Linear) and ``out.1`` (LayerNorm) carry weights."""

    def __init__(self, idim: int, odim: int, eps: float) -> None:
        super().__init__()
        self.out = nn.Sequential(nn.Linear(idim, odim), nn.LayerNorm(odim, eps=eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x)


MAX_CACHED_TABLE = 4096
"""Longest pass (tokens) whose position tables are kept: a 16 MB mask, an 8 MB bf16 table at full size."""


class BlockConformerEncoder(nn.Module):
    """Block-causal relative-position Conformer over the prompt+new token embeddings."""

    def __init__(self, cfg: FlowEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = _LinearInput(cfg.input_size, cfg.output_size, cfg.layer_norm_eps)
        # after_norm before encoders: the reference registers it in the base class first (state_dict order).
        self.after_norm = nn.LayerNorm(cfg.output_size, eps=cfg.layer_norm_eps)
        self.encoders = nn.ModuleList(ConformerEncoderLayer(cfg) for _ in range(cfg.num_blocks))
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[int, torch.Tensor, torch.Tensor]] = {}

    def position_tables(
        self, length: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The relative-position table [1, 2L-1, D] and the block-causal mask [L, L] of an L-token pass, as views of
        tables built once for a longer length (doubled when a pass is longer).

        Why: both depend on the length only, and building them was ~30 launches per pass from the decoder's thread.
        Each entry depends on its position only (the reference builds the table for 5000 positions and slices it
        too), so a slice of a longer table is the table of the shorter length."""
        n, pos, mask = self._tables.get((device, dtype), (0, None, None))
        if length > MAX_CACHED_TABLE:  # a long offline decode: built for this pass only (the mask is L x L)
            return rel_pos_embedding(length, self.cfg.output_size, device=device).to(dtype), block_causal_mask(
                length, self.cfg.block_size, device=device
            )
        if n < length:
            n = min(MAX_CACHED_TABLE, max(length, 2 * n, 512))
            pos = rel_pos_embedding(n, self.cfg.output_size, device=device).to(dtype)
            mask = block_causal_mask(n, self.cfg.block_size, device=device)
            self._tables[(device, dtype)] = (n, pos, mask)
        return pos[:, n - length : n + length - 1], mask[:length, :length]

    def forward(
        self, xs: torch.Tensor, lengths: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        # xs: [B, L, input_size]; lengths: [B] valid tokens per row (right padding); tables: `position_tables` of a
        # length >= L to slice (a CUDA graph's: built before its capture, kept alive by its owner), else the cache's
        length = xs.size(1)
        xs = self.embed(xs) * math.sqrt(self.cfg.output_size)  # [B, L, D]
        if tables is None:
            pos_emb, causal = self.position_tables(length, xs.device, xs.dtype)  # [1, 2L-1, D], [L, L]
        else:
            pos_emb, causal = slice_tables(tables, length)
        valid = torch.arange(length, device=xs.device)[None, :] < lengths.to(xs.device)[:, None]  # [B, L]
        # Padded keys are hidden from every query, so a row's output does not depend on the batch's padding.
        allowed = causal[None] & valid[:, None, :]
        for layer in self.encoders:
            xs = layer(xs, allowed, pos_emb)
        return self.after_norm(xs)  # [B, L, D]
