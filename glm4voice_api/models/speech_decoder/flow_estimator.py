"""The CFM vector-field estimator: Matcha-TTS/CosyVoice ``ConditionalDecoder`` (a 1-D U-Net).

Down blocks, mid blocks and up blocks of [ResnetBlock1D, n x BasicTransformerBlock, down/up-sampler],
with a sinusoidal + MLP time embedding. Key names match the reference (``down_blocks.0.1.2.attn1.to_q``
...) so ``flow.pt`` loads unchanged.

Padding: the reference is only ever run with batch size 1 and all frames valid, where its 0/1 additive
attention mask is a constant and GroupNorm sees only real frames. To batch sequences of different lengths
and still get each row's separate result, padded keys get -inf in attention and GroupNorm statistics
are taken over valid frames only. With no padding both reduce to the reference computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.models.speech_decoder.yaml_config import YamlObject, expect_class

__all__ = ["ConditionalDecoder", "EstimatorConfig", "masked_group_norm"]

ESTIMATOR_CLASS = "cosyvoice.flow.decoder.ConditionalDecoder"


@dataclass(frozen=True)
class EstimatorConfig:
    """U-Net sizes (defaults = the released decoder: 320 -> [256, 256] -> 80, 12 mid blocks)."""

    in_channels: int = 320
    out_channels: int = 80
    channels: tuple[int, ...] = (256, 256)
    attention_head_dim: int = 64
    n_blocks: int = 4
    num_mid_blocks: int = 12
    num_heads: int = 8
    groups: int = 8  # GroupNorm groups of Block1D (reference default, not in the YAML)

    @property
    def time_embed_dim(self) -> int:
        return self.channels[0] * 4

    @classmethod
    def full(cls) -> EstimatorConfig:
        return cls()

    @classmethod
    def tiny(cls) -> EstimatorConfig:
        return cls(channels=(32, 32), attention_head_dim=16, n_blocks=1, num_mid_blocks=2, num_heads=4)

    @classmethod
    def from_yaml(cls, obj: YamlObject) -> EstimatorConfig:
        expect_class(obj, ESTIMATOR_CLASS, where="flow.decoder.estimator")
        if obj.get("act_fn", "gelu") != "gelu":
            msg = f"flow.decoder.estimator: unsupported act_fn {obj['act_fn']!r} (only 'gelu')"
            raise CheckpointFormatError(msg)
        d = cls()
        cfg = cls(
            in_channels=int(obj.get("in_channels", d.in_channels)),
            out_channels=int(obj.get("out_channels", d.out_channels)),
            channels=tuple(int(c) for c in obj.get("channels", d.channels)),
            attention_head_dim=int(obj.get("attention_head_dim", d.attention_head_dim)),
            n_blocks=int(obj.get("n_blocks", d.n_blocks)),
            num_mid_blocks=int(obj.get("num_mid_blocks", d.num_mid_blocks)),
            num_heads=int(obj.get("num_heads", d.num_heads)),
        )
        if not cfg.channels or any(c % cfg.groups for c in cfg.channels):
            msg = f"flow.decoder.estimator: channels {cfg.channels} must be non-empty multiples of {cfg.groups}"
            raise CheckpointFormatError(msg)
        return cfg


def masked_group_norm(x: torch.Tensor, norm: nn.GroupNorm, mask: torch.Tensor | None) -> torch.Tensor:
    """GroupNorm whose statistics ignore padded frames; ``mask=None`` means no padding (plain GroupNorm)."""
    # x: [B, C, T]; mask: [B, 1, T] (1 = valid)
    if mask is None:
        return norm(x)
    b, c, t = x.shape
    g = norm.num_groups
    # Statistics in float32 whatever x's dtype, as F.group_norm keeps them: in bf16 the frame count, mean and
    # variance would each be rounded to 8 bits (~0.4%), so a padded row would normalise differently from itself
    # unpadded by more than bf16's own rounding of the output.
    xg = x.reshape(b, g, c // g, t).float()  # [B, G, C/G, T]
    m = mask.reshape(b, 1, 1, t).float()
    count = m.sum(dim=(2, 3), keepdim=True) * (c // g)  # [B, 1, 1, 1]
    mean = (xg * m).sum(dim=(2, 3), keepdim=True) / count
    var = (((xg - mean) * m) ** 2).sum(dim=(2, 3), keepdim=True) / count
    y = ((xg - mean) / torch.sqrt(var + norm.eps)).reshape(b, c, t)
    return (y * norm.weight[None, :, None].float() + norm.bias[None, :, None].float()).to(x.dtype)


def sinusoidal_time_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Matcha ``SinusoidalPosEmb``: [N] or scalar times -> [N, dim] (sin || cos), same op order."""
    if t.ndim < 1:
        t = t.unsqueeze(0)
    half = dim // 2
    step = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=t.device).float() * -step)  # [half]
    emb = scale * t.unsqueeze(1) * freqs.unsqueeze(0)  # [N, half]
    return torch.cat((emb.sin(), emb.cos()), dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, time_embed_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class Block1D(nn.Module):
    """Conv1d k3 -> GroupNorm -> Mish on masked input; ``block.{0,1}`` as in the reference."""

    def __init__(self, dim: int, dim_out: int, groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(dim, dim_out, 3, padding=1), nn.GroupNorm(groups, dim_out), nn.Mish())

    def forward(self, x: torch.Tensor, mask: torch.Tensor, gn_mask: torch.Tensor | None) -> torch.Tensor:
        # x: [B, C, T]; mask: [B, 1, T]
        h = self.block[0](x * mask)
        h = F.mish(masked_group_norm(h, self.block[1], gn_mask))
        return h * mask


class ResnetBlock1D(nn.Module):
    def __init__(self, dim: int, dim_out: int, time_emb_dim: int, groups: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = Block1D(dim, dim_out, groups)
        self.block2 = Block1D(dim_out, dim_out, groups)
        self.res_conv = nn.Conv1d(dim, dim_out, 1)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, gn_mask: torch.Tensor | None, t_emb: torch.Tensor
    ) -> torch.Tensor:
        # x: [B, C_in, T]; t_emb: [1 or B, time_emb_dim]
        h = self.block1(x, mask, gn_mask)
        h = h + self.mlp(t_emb).unsqueeze(-1)
        h = self.block2(h, mask, gn_mask)
        return h + self.res_conv(x * mask)


class _Attention(nn.Module):
    """diffusers ``Attention`` self-attention subset: bias-free q/k/v, ``to_out.0`` with bias."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        # x: [B, T, C]; attn_bias: [B, 1, 1, T] additive (0 valid, -inf padded) or None
        b, t, _ = x.shape
        q = self.to_q(x).view(b, t, self.heads, -1).transpose(1, 2)  # [B, H, T, d]
        k = self.to_k(x).view(b, t, self.heads, -1).transpose(1, 2)
        v = self.to_v(x).view(b, t, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)  # [B, H, T, d]
        return self.to_out[0](out.transpose(1, 2).reshape(b, t, -1))


class _GELUProj(nn.Module):
    """diffusers ``GELU`` activation module: ``proj`` then exact GELU."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        # net.1 is the (parameter-free) dropout of the reference; kept so net.2 keeps its index.
        self.net = nn.ModuleList([_GELUProj(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """Self-attention + FFN, pre-LayerNorm; no cross-attention (``norm2``/``attn2`` absent)."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = _Attention(dim, heads, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = _FeedForward(dim)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), attn_bias)
        return x + self.ff(self.norm3(x))


def _stage(cfg: EstimatorConfig, dim_in: int, dim_out: int, sampler: nn.Module) -> nn.ModuleList:
    blocks = nn.ModuleList(
        BasicTransformerBlock(dim_out, cfg.num_heads, cfg.attention_head_dim) for _ in range(cfg.n_blocks)
    )
    return nn.ModuleList([ResnetBlock1D(dim_in, dim_out, cfg.time_embed_dim, cfg.groups), blocks, sampler])


class _Sampler(nn.Module):
    """Holds the reference's ``Downsample1D``/``Upsample1D`` conv under the key ``.conv``."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConditionalDecoder(nn.Module):
    """Estimates the flow velocity from [x, mu, spks, cond] (4 x 80 channels) and time t."""

    def __init__(self, cfg: EstimatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.time_mlp = TimestepEmbedding(cfg.in_channels, cfg.time_embed_dim)
        self.down_blocks = nn.ModuleList()
        dim_out = cfg.in_channels
        for i, c in enumerate(ch):
            dim_in, dim_out = dim_out, c
            last = i == len(ch) - 1
            sampler = nn.Conv1d(c, c, 3, padding=1) if last else _Sampler(nn.Conv1d(c, c, 3, 2, 1))
            self.down_blocks.append(_stage(cfg, dim_in, dim_out, sampler))
        self.mid_blocks = nn.ModuleList()
        for _ in range(cfg.num_mid_blocks):
            blocks = nn.ModuleList(
                BasicTransformerBlock(ch[-1], cfg.num_heads, cfg.attention_head_dim) for _ in range(cfg.n_blocks)
            )
            self.mid_blocks.append(
                nn.ModuleList([ResnetBlock1D(ch[-1], ch[-1], cfg.time_embed_dim, cfg.groups), blocks])
            )
        up = (*ch[::-1], ch[0])
        self.up_blocks = nn.ModuleList()
        for i in range(len(up) - 1):
            c = up[i + 1]
            last = i == len(up) - 2
            sampler = nn.Conv1d(c, c, 3, padding=1) if last else _Sampler(nn.ConvTranspose1d(c, c, 4, 2, 1))
            self.up_blocks.append(_stage(cfg, up[i] * 2, c, sampler))
        self.final_block = Block1D(up[-1], up[-1], cfg.groups)
        self.final_proj = nn.Conv1d(up[-1], cfg.out_channels, 1)
        # Run the transformer blocks on a frame-major copy ([B, T, C] in memory) instead of a transposed view of the
        # channel-major conv activations. On the view every LayerNorm, residual add and projection reads strided
        # memory: in eager bf16 one such kernel (elementwise_kernel<128, 4, nocast>) was 38% of an ODE step's GPU
        # time (bench/results/gpu_decoder_kernels.json). The same values either way (a copy, not a new op order).
        # Measured on an H100 with the blocks compiled as served (bench/results/gpu_layout_probe.json): 1.01-1.15x
        # faster per ODE step, most at the small batches that set first audio.
        self.frame_major = True

    def compile_blocks(self) -> None:
        """Compile every ResnetBlock1D and BasicTransformerBlock with ``torch.compile`` (inductor).

        Why per block: an ODE step is ~2000 small kernels (LayerNorm, GELU, Mish, the masked GroupNorm's sums, the
        residual adds), which inductor fuses into a few per block. Compiling the whole estimator unrolls its 80
        blocks into one graph (149 s on an H200, bench/results/gpu_decoder_compile.json); per block, the 64
        transformer blocks share one compiled graph and the 16 resnets share three (one per input width), so the
        compile is a few small graphs, reused by every block and, with ``dynamic=True``, by every (rows, frames)
        bucket. Compiled code is captured in the flow's CUDA graphs like eager code.
        """
        import torch._dynamo
        import torch.fx.experimental._config as fx_config

        # Duck sizing would give equal sizes one symbol: a 256-frame bucket would share the 256 channels' symbol,
        # which LayerNorm pins, and every other frame count would recompile. Read when each graph compiles.
        fx_config.use_duck_shape = False
        # Distinct graphs per block class: input widths x (padded or not) x (normal or inference-mode tensors).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        for module in self.modules():
            if isinstance(module, (ResnetBlock1D, BasicTransformerBlock)):
                module.compile(dynamic=True)

    def uncompile_blocks(self) -> None:
        """Back to eager blocks (the fallback when a compile fails)."""
        # nn.Module.compile() keeps the compiled callable here; without it __call__ runs the module eagerly again.
        for module in self.modules():
            if isinstance(module, (ResnetBlock1D, BasicTransformerBlock)):
                module._compiled_call_impl = None

    @property
    def blocks_compiled(self) -> bool:
        return any(getattr(m, "_compiled_call_impl", None) is not None for m in self.modules())

    @staticmethod
    def _masks(mask: torch.Tensor, padded: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """GroupNorm mask and additive attention bias for one resolution (None when nothing is padded)."""
        # mask: [B, 1, T]
        if not padded:
            return None, None
        bias = torch.zeros(mask.shape, dtype=mask.dtype, device=mask.device)
        bias = bias.masked_fill(mask == 0, -float("inf")).unsqueeze(1)  # [B, 1, 1, T]
        return mask, bias

    def _transformers(self, blocks: nn.ModuleList, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = x.transpose(1, 2)  # [B, T, C]
        if self.frame_major:
            x = x.contiguous()
        for block in blocks:
            x = block(x, bias)
        x = x.transpose(1, 2)  # [B, C, T]
        return x.contiguous() if self.frame_major else x

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        t: torch.Tensor,
        spks: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        *,
        padded: bool | None = None,
    ) -> torch.Tensor:
        # x, mu, cond: [B, 80, T]; mask: [B, 1, T]; t: scalar or [B]; spks: [B, 80]
        if padded is None:
            padded = bool((mask == 0).any())
        t_emb = self.time_mlp(sinusoidal_time_embedding(t, self.cfg.in_channels).to(x.dtype))  # [1|B, E]
        parts = [x, mu]
        if spks is not None:
            parts.append(spks.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        if cond is not None:
            parts.append(cond)
        h = torch.cat(parts, dim=1)  # [B, in_channels, T]

        masks = [mask]
        hiddens = []
        for resnet, blocks, sampler in self.down_blocks:
            m = masks[-1]
            gn_mask, bias = self._masks(m, padded)
            h = resnet(h, m, gn_mask, t_emb)
            h = self._transformers(blocks, h, bias)
            hiddens.append(h)
            h = sampler(h * m)
            masks.append(m[:, :, ::2].contiguous())
        # The last "downsample" keeps the length, so its halved mask is dropped (as in the reference).
        masks = masks[:-1]
        m = masks[-1]
        gn_mask, bias = self._masks(m, padded)
        for resnet, blocks in self.mid_blocks:
            h = resnet(h, m, gn_mask, t_emb)
            h = self._transformers(blocks, h, bias)
        for resnet, blocks, sampler in self.up_blocks:
            m = masks.pop()
            skip = hiddens.pop()
            gn_mask, bias = self._masks(m, padded)
            h = torch.cat([h[:, :, : skip.shape[-1]], skip], dim=1)
            h = resnet(h, m, gn_mask, t_emb)
            h = self._transformers(blocks, h, bias)
            h = sampler(h * m)
        h = self.final_block(h, m, gn_mask)
        return self.final_proj(h * m) * mask  # [B, out_channels, T]
