"""HiFT's padded pass (`hift_ragged.vocode_padded`) as a function of device tensors only, for CUDA graph capture.

Why: `vocode_padded` is ~420 eager ops per pass, each launched from Python; with the LLM in the same process each
launch may wait for the GIL behind vLLM's engine thread. A CUDA graph replays them all at once, but a graph has
fixed shapes and cannot hold host work, so this function has no host synchronisation (no `.item()`, `.tolist()`,
boolean indexing, Python branch on tensor values or Python list of lengths): the row lengths, the random draws and
the cache splice come in as tensors, every mask is computed from the lengths tensor.

Exact: the same ops in the same order as `hift_ragged.py`, on the same shapes. The two differences change no value:
masks are always applied (`vocode_padded` skips a mask of all ones: x * 1.0 == x), and the cache splice is a
`torch.where` on positions instead of an `index_copy_` (both copy values). The draws are made per row outside,
from each row's generator in the reference's order and shapes (`draw_rows`), so they are the same numbers
(`tests/models/test_hift_graphs.py` compares with `torch.equal`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from glm4voice_api.models.speech_decoder.hift import HiFTGenerator
from glm4voice_api.models.speech_decoder.transfer import to_device

__all__ = ["draw_rows", "hift_core"]


def _mask(lengths: torch.Tensor, total: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, total] ones over each row's first lengths[b] positions (`hift_ragged._mask`, never None)."""
    idx = torch.arange(total, device=lengths.device)
    return (idx[None, :] < lengths[:, None]).unsqueeze(1).to(dtype)


def draw_rows(
    hift: HiFTGenerator,
    generators: list[torch.Generator],
    samples: list[int],
    phase_u: torch.Tensor,
    noise: torch.Tensor,
) -> None:
    """Row b's draws from its own generator into `phase_u[b]` ([H+1, 1]) and `noise[b, :, :samples[b]]`, as
    `hift_ragged._sources` draws them (the phase uniforms of every row first, then each row's noise; per generator
    the reference's order). `noise` must already be zero past each row's samples (padding rows: all zero)."""
    h1 = hift.m_source.harmonic_num + 1
    device = phase_u.device
    rows = [torch.rand((1, h1, 1), generator=g, device=g.device) for g in generators]
    u = torch.cat([r if r.device == device else to_device(r, device) for r in rows])
    phase_u[: len(rows)].copy_(u)
    for b, (g, n) in enumerate(zip(generators, samples, strict=True)):
        row = torch.randn((h1, n), generator=g, device=g.device)
        noise[b, :, :n].copy_(row if row.device == device else to_device(row, device))


def _f0(hift: HiFTGenerator, mel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`hift_ragged._f0`: [B, 80, T] -> [B, T] (garbage past each row's end)."""
    pred = hift.f0_predictor
    h = mel.to(pred.classifier.weight.dtype)
    for layer in pred.condnet:
        h = layer(h)
        if isinstance(layer, torch.nn.Conv1d):
            h = h * mask.to(h.dtype)
    return torch.abs(pred.classifier(h.transpose(1, 2)).squeeze(-1))


def _sources(hift: HiFTGenerator, f0: torch.Tensor, phase_u: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """`hift_ragged._sources` with the draws given: phase_u [B, H+1, 1] uniforms, noise [B, H+1, N]."""
    src = hift.m_source
    device = f0.device
    up = hift.upsample_factor
    batch, frames = f0.shape
    # Nearest upsampling as expand + reshape: the values of `repeat_interleave(up, dim=-1)` (a copy of each frame's
    # F0) without relying on how a given torch version sizes its output (a tensor-repeats path syncs with the host).
    f0_up = f0[:, None, :, None].float().expand(batch, 1, frames, up).reshape(batch, 1, frames * up)  # [B, 1, N]
    # Host 0-dim tensors enter a device op as scalars (baked into a captured kernel: constants anyway).
    low, high = torch.tensor(-math.pi, dtype=torch.float32), torch.tensor(math.pi, dtype=torch.float32)
    phase = low + phase_u * (high - low)
    phase[:, 0, :] = 0
    harmonics = torch.arange(1, src.harmonic_num + 2, device=device, dtype=torch.float32)
    f_mat = f0_up * harmonics[None, :, None] / src.sampling_rate
    theta = 2 * math.pi * (torch.cumsum(f_mat, dim=-1) % 1)
    sine = src.sine_amp * torch.sin(theta + phase)
    uv = (f0_up > src.voiced_threshold).to(torch.float32)
    noise_amp = uv * src.noise_std + (1 - uv) * src.sine_amp / 3
    sine = sine * uv + noise_amp * noise
    merged = torch.tanh(F.linear(sine.transpose(1, 2), src.l_linear.weight.float(), src.l_linear.bias.float()))
    return merged.transpose(1, 2)  # [B, 1, N]


def _source_stft(hift: HiFTGenerator, source: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """`hift_ragged._source_stft`: each row reflected at its own end, a non-centred STFT, zero past its frames."""
    n_fft, hop = hift.cfg.istft_n_fft, hift.cfg.istft_hop_len
    pad = n_fft // 2
    s = source.squeeze(1).float()
    n_max = s.shape[1]
    n = samples[:, None]
    idx = torch.arange(n_max + 2 * pad, device=s.device)[None, :] - pad
    idx = idx.abs()
    idx = torch.where(idx >= n, 2 * (n - 1) - idx, idx)
    inside = (idx >= 0) & (torch.arange(n_max + 2 * pad, device=s.device)[None, :] < n + 2 * pad)
    padded = torch.gather(s, 1, idx.clamp(0, n_max - 1)) * inside
    # On CUDA the STFT and the inverse's irfft use cuFFT plans: a plan must exist before a capture (the warm-up
    # run before each capture creates it, torch's plan cache keeps it).
    spec = torch.stft(padded, n_fft, hop, n_fft, window=hift.stft_window.float(), center=False, return_complex=True)
    out = torch.cat([spec.real, spec.imag], dim=1)  # [B, 2F, frames]
    return out * _mask(samples // hop + 1, out.shape[-1], out.dtype)


def _istft(hift: HiFTGenerator, spec: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """`hift_ragged._istft`: the inverse STFT of each row's first frames[b] frames, overlap-add by `fold`."""
    n_fft, hop = hift.cfg.istft_n_fft, hift.cfg.istft_hop_len
    window = hift.stft_window.float()
    batch, _, f_max = spec.shape
    fmask = _mask(frames, f_max, torch.float32)
    y = torch.fft.irfft(spec, n=n_fft, dim=1) * window[None, :, None] * fmask  # [B, n_fft, F]
    length = n_fft + hop * (f_max - 1)
    ola = F.fold(y, (1, length), (1, n_fft), stride=(1, hop)).reshape(batch, length)
    env_frames = window.square()[None, :, None] * fmask
    env = F.fold(env_frames, (1, length), (1, n_fft), stride=(1, hop)).reshape(batch, length)
    pad = n_fft // 2
    ola, env = ola[:, pad : length - pad], env[:, pad : length - pad]
    return ola / torch.where(env > 1e-11, env, torch.ones_like(env))


def _decode(hift: HiFTGenerator, mel: torch.Tensor, source: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`hift_ragged._decode`: every layer re-masked to each row's length (stage masks from the lengths tensor)."""
    cfg = hift.cfg
    dtype = hift.conv_pre.weight.dtype
    up = hift.upsample_factor
    samples = lengths * up
    s_stft = _source_stft(hift, source, samples).to(dtype)

    rate = 1
    x = hift.conv_pre(mel.to(dtype)) * _mask(lengths, mel.shape[-1], dtype)
    n_kernels = len(cfg.resblock_kernel_sizes)
    for i, up_layer in enumerate(hift.ups):
        rate *= cfg.upsample_rates[i]
        x = up_layer(F.leaky_relu(x, cfg.lrelu_slope))
        last = i == len(hift.ups) - 1
        if last:
            x = x * _mask(lengths * rate, x.shape[-1], dtype)
            x = hift.reflection_pad(x)
        mask = _mask(lengths * rate + (1 if last else 0), x.shape[-1], dtype)
        x = x * mask
        x = x + hift.source_resblocks[i](hift.source_downs[i](s_stft) * mask, mask)
        xs = hift.resblocks[i * n_kernels](x, mask)
        for j in range(1, n_kernels):
            xs = xs + hift.resblocks[i * n_kernels + j](x, mask)
        x = xs / n_kernels

    x = hift.conv_post(F.leaky_relu(x)).float()
    n_bins = cfg.istft_n_fft // 2 + 1
    magnitude = torch.clip(torch.exp(x[:, :n_bins, :]), max=1e2)
    phase = torch.sin(x[:, n_bins:, :])
    spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
    wav = _istft(hift, spec, samples // cfg.istft_hop_len + 1)
    return torch.clamp(wav, -cfg.audio_limit, cfg.audio_limit)


def hift_core(
    hift: HiFTGenerator,
    mel: torch.Tensor,
    lengths: torch.Tensor,
    phase_u: torch.Tensor,
    noise: torch.Tensor,
    cache: torch.Tensor,
    cache_len: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`vocode_padded` (no injected sources) on device tensors, capturable as one CUDA graph.

    mel [B, 80, T] float32, zero past each row's lengths[b] (>= 1) frames; lengths [B] int64; phase_u [B, H+1, 1]
    and noise [B, H+1, N] (N = T * upsample, zero past each row's samples) the draws (`draw_rows`); cache [B, W]
    float32 and cache_len [B] int64: row b's first cache_len[b] source samples are cache[b, :cache_len[b]] (0: no
    cache; cache_len[b] <= its samples). Returns wav [B, N] and source [B, 1, N], valid over each row's samples.
    """
    up = hift.upsample_factor
    t_max = mel.shape[-1]
    n_max = t_max * up
    samples = lengths * up
    f0 = _f0(hift, mel, _mask(lengths, t_max, torch.float32))
    source = _sources(hift, f0, phase_u, noise)
    # The cache splice (`hift_ragged._splice_caches`) as a select on positions: the same values, no row index.
    width = min(cache.shape[-1], n_max)
    pos = torch.arange(width, device=mel.device)
    head = torch.where(pos[None, :] < cache_len[:, None], cache[:, :width], source[:, 0, :width])
    source = torch.cat([head, source[:, 0, width:]], dim=-1)[:, None, :]
    source = source * _mask(samples, n_max, torch.float32)
    return _decode(hift, mel, source, lengths), source
