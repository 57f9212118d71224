"""The steps of HiFT's padded pass shared by the eager `hift_ragged.py` (row lengths a host list) and the graph-safe
`hift_core.py` (row lengths a device tensor, no host synchronisation): one code, so the same ops in the same order.

The row lengths come in as `Rows`: `rows.mask(per_row, total, dtype)` is [B, 1, total] ones over each row's first
per_row(lengths[b]) positions, `rows.values(per_row)` the [B] int64 values per_row(lengths[b]) on the device.
`per_row` is arithmetic that means the same on an int and on an int64 tensor (`t * rate + 1`, `t * up // hop + 1`),
so both sides mask the same positions. A list's mask is None where no row is padded (`masked` then skips it: x * 1.0
== x); a tensor's is always a tensor (a graph cannot branch on its values). Either way the values are the same
(`tests/models/test_hift_graphs.py` compares `hift_core` with `vocode_padded` by `torch.equal`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from glm4voice_api.models.speech_decoder.hift import HiFTGenerator
from glm4voice_api.models.speech_decoder.transfer import lengths_tensor

__all__ = ["Rows", "decode", "f0", "istft", "list_mask", "masked", "sine_source", "tensor_mask"]

PerRow = Callable[[object], object]


def list_mask(lengths: list[int], total: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """[B, 1, total] ones over each row's first lengths[b] positions (None when no row is padded)."""
    if min(lengths) == total:
        return None
    idx = torch.arange(total, device=device)
    return (idx[None, :] < lengths_tensor(lengths, device)[:, None]).unsqueeze(1).to(dtype)


def tensor_mask(lengths: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor:
    """`list_mask` of a [B] int64 device tensor, never None."""
    idx = torch.arange(total, device=lengths.device)
    return (idx[None, :] < lengths[:, None]).unsqueeze(1).to(dtype)


class Rows:
    """A pass's row lengths in frames: a host list (eager) or a [B] int64 device tensor (graph-safe)."""

    def __init__(self, lengths: list[int] | torch.Tensor, device: torch.device) -> None:
        self.lengths = lengths
        self.device = device

    def mask(self, per_row: PerRow, total: int, dtype: torch.dtype) -> torch.Tensor | None:
        if isinstance(self.lengths, torch.Tensor):
            return tensor_mask(per_row(self.lengths), total, dtype)  # type: ignore[arg-type]
        return list_mask([per_row(t) for t in self.lengths], total, self.device, dtype)  # type: ignore[misc]

    def values(self, per_row: PerRow) -> torch.Tensor:
        if isinstance(self.lengths, torch.Tensor):
            return per_row(self.lengths)  # type: ignore[return-value]
        return lengths_tensor([per_row(t) for t in self.lengths], self.device)  # type: ignore[misc]


def masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


def f0(hift: HiFTGenerator, mel: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`ConvRNNF0Predictor.forward` on a zero-padded batch: [B, 80, T] -> [B, T] (garbage past each row's end)."""
    pred = hift.f0_predictor
    h = mel.to(pred.classifier.weight.dtype)
    for layer in pred.condnet:
        h = layer(h)
        if isinstance(layer, torch.nn.Conv1d):
            h = masked(h, mask if mask is None else mask.to(h.dtype))
    return torch.abs(pred.classifier(h.transpose(1, 2)).squeeze(-1))


def sine_source(hift: HiFTGenerator, f0_up: torch.Tensor, u: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The NSF source from the upsampled F0 [B, 1, N] and the draws: phase uniforms u [B, H+1, 1] and noise
    [B, H+1, N] -> [B, 1, N]."""
    src = hift.m_source
    # Reference draw 1 (SourceModuleHnNSF.draw_phase) as Uniform(-pi, pi): low + rand * (high - low) in float32, the
    # same two roundings as on the host. 0-dim host tensors enter a device op as scalars: no copy (and in a captured
    # kernel, constants anyway).
    low, high = torch.tensor(-math.pi, dtype=torch.float32), torch.tensor(math.pi, dtype=torch.float32)
    phase = low + u * (high - low)
    phase[:, 0, :] = 0
    harmonics = torch.arange(1, src.harmonic_num + 2, device=f0_up.device, dtype=torch.float32)
    f_mat = f0_up * harmonics[None, :, None] / src.sampling_rate
    # cumsum is causal: each row's prefix is what its own call computes (up to the scan's rounding).
    theta = 2 * math.pi * (torch.cumsum(f_mat, dim=-1) % 1)
    sine = src.sine_amp * torch.sin(theta + phase)
    uv = (f0_up > src.voiced_threshold).to(torch.float32)
    noise_amp = uv * src.noise_std + (1 - uv) * src.sine_amp / 3
    sine = sine * uv + noise_amp * noise
    merged = torch.tanh(F.linear(sine.transpose(1, 2), src.l_linear.weight.float(), src.l_linear.bias.float()))
    return merged.transpose(1, 2)  # [B, 1, N]


def source_stft(hift: HiFTGenerator, source: torch.Tensor, rows: Rows) -> torch.Tensor:
    """torch.stft(center=True) of each row at its own length, zero past its frames: [B, 2F, N/hop + 1]."""
    n_fft, hop = hift.cfg.istft_n_fft, hift.cfg.istft_hop_len
    up = hift.upsample_factor
    pad = n_fft // 2
    s = source.squeeze(1).float()
    n_max = s.shape[1]
    # Reflect each row at its own end, as the centred STFT of its own call does: one gather for the batch.
    n = rows.values(lambda t: t * up)[:, None]
    idx = torch.arange(n_max + 2 * pad, device=s.device)[None, :] - pad
    idx = idx.abs()  # left edge: x[-k] -> x[k]
    idx = torch.where(idx >= n, 2 * (n - 1) - idx, idx)  # right edge: x[n-1+k] -> x[n-1-k]
    inside = (idx >= 0) & (torch.arange(n_max + 2 * pad, device=s.device)[None, :] < n + 2 * pad)
    padded = torch.gather(s, 1, idx.clamp(0, n_max - 1)) * inside
    # On CUDA the STFT and the inverse's irfft use cuFFT plans: a plan must exist before a capture (the warm-up
    # run before each capture creates it, torch's plan cache keeps it).
    spec = torch.stft(padded, n_fft, hop, n_fft, window=hift.stft_window.float(), center=False, return_complex=True)
    out = torch.cat([spec.real, spec.imag], dim=1)  # [B, 2F, frames]
    return masked(out, rows.mask(lambda t: t * up // hop + 1, out.shape[-1], out.dtype))


def istft(hift: HiFTGenerator, spec: torch.Tensor, fmask: torch.Tensor | None) -> torch.Tensor:
    """torch.istft(center=True) of each row's frames (fmask [B, 1, F]: ones over them; None: all), written out as
    overlap-add by `fold`: [B, hop * (F_max - 1)]."""
    n_fft, hop = hift.cfg.istft_n_fft, hift.cfg.istft_hop_len
    window = hift.stft_window.float()
    batch, _, f_max = spec.shape
    fmask = torch.ones(batch, 1, f_max, device=spec.device) if fmask is None else fmask
    y = torch.fft.irfft(spec, n=n_fft, dim=1) * window[None, :, None] * fmask  # [B, n_fft, F]
    length = n_fft + hop * (f_max - 1)
    ola = F.fold(y, (1, length), (1, n_fft), stride=(1, hop)).reshape(batch, length)
    env_frames = window.square()[None, :, None] * fmask  # each row's envelope counts its own frames only
    env = F.fold(env_frames, (1, length), (1, n_fft), stride=(1, hop)).reshape(batch, length)
    pad = n_fft // 2
    ola, env = ola[:, pad : length - pad], env[:, pad : length - pad]
    return ola / torch.where(env > 1e-11, env, torch.ones_like(env))


def decode(hift: HiFTGenerator, mel: torch.Tensor, source: torch.Tensor, rows: Rows) -> torch.Tensor:
    """`HiFTGenerator.decode` on a zero-padded batch, every layer re-masked to each row's length: [B, N_max]."""
    cfg = hift.cfg
    dtype = hift.conv_pre.weight.dtype
    up = hift.upsample_factor
    s_stft = source_stft(hift, source, rows).to(dtype)

    rate = 1
    x = masked(hift.conv_pre(mel.to(dtype)), rows.mask(lambda t: t, mel.shape[-1], dtype))
    n_kernels = len(cfg.resblock_kernel_sizes)
    for i, up_layer in enumerate(hift.ups):
        rate *= cfg.upsample_rates[i]
        x = up_layer(F.leaky_relu(x, cfg.lrelu_slope))
        last = i == len(hift.ups) - 1
        if last:
            x = masked(x, rows.mask(lambda t, r=rate: t * r, x.shape[-1], dtype))
            x = hift.reflection_pad(x)
        extra = 1 if last else 0
        mask = rows.mask(lambda t, r=rate, e=extra: t * r + e, x.shape[-1], dtype)
        x = masked(x, mask)
        x = x + hift.source_resblocks[i](masked(hift.source_downs[i](s_stft), mask), mask)
        xs = hift.resblocks[i * n_kernels](x, mask)
        for j in range(1, n_kernels):
            xs = xs + hift.resblocks[i * n_kernels + j](x, mask)
        x = xs / n_kernels

    x = hift.conv_post(F.leaky_relu(x)).float()
    n_bins = cfg.istft_n_fft // 2 + 1
    magnitude = torch.clip(torch.exp(x[:, :n_bins, :]), max=1e2)
    phase = torch.sin(x[:, n_bins:, :])
    spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
    wav = istft(hift, spec, rows.mask(lambda t: t * up // cfg.istft_hop_len + 1, spec.shape[-1], torch.float32))
    return torch.clamp(wav, -cfg.audio_limit, cfg.audio_limit)
