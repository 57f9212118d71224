"""HiFT over rows of different lengths in ONE padded pass, each row equal to its own separate call.

Why: a decoder pass holds chunks of many streams whose mel lengths differ by a few frames (chunk sizes, the
crossfade, the mel-length formula's flooring). Grouping by exact length made HiFT one call per row, and on a GPU
each call is ~150 small kernels: the per-row cost that kept batching from paying off. Plain padding would be
wrong: HiFT's convolutions are non-causal, so a longer row's padding would reach a shorter row's last samples.

How it stays exact: a zero-padded convolution sees zeros past the end of its input. So after every layer that
writes into the padding (each convolution, the transposed convolutions' bias), the padding is set back to zero,
and the next layer sees exactly the zeros the row's own call would pad with (Snake, leaky ReLU and ELU map 0 to
0, so activations keep it zero). The two steps that do not zero-pad are done per row's length instead: the source
STFT reflects each row at its own end (a manual reflect pad, then a non-centred STFT), and the inverse STFT divides
by a window envelope counted over each row's own frames (overlap-add written out with `fold`). The random draws
are per row from each row's generator with its own length, as a separate call draws them.

What differs from separate calls is float rounding only: the sine phase is a cumulative sum over the padded
batch (a GPU scan may group it differently), and batched convolutions may pick other kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from glm4voice_api.models.speech_decoder.hift import HiFTGenerator
from glm4voice_api.models.speech_decoder.transfer import lengths_tensor, to_device

__all__ = ["vocode_padded", "vocode_ragged"]


def _mask(lengths: list[int], total: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """[B, 1, total] ones over each row's first lengths[b] positions (None when no row is padded)."""
    if min(lengths) == total:
        return None
    idx = torch.arange(total, device=device)
    return (idx[None, :] < lengths_tensor(lengths, device)[:, None]).unsqueeze(1).to(dtype)


def _m(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


def _f0(hift: HiFTGenerator, mel: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`ConvRNNF0Predictor.forward` on a zero-padded batch: [B, 80, T] -> [B, T] (garbage past each row's end)."""
    pred = hift.f0_predictor
    h = mel.to(pred.classifier.weight.dtype)
    for layer in pred.condnet:
        h = layer(h)
        if isinstance(layer, torch.nn.Conv1d):
            h = _m(h, mask if mask is None else mask.to(h.dtype))
    return torch.abs(pred.classifier(h.transpose(1, 2)).squeeze(-1))


def _sources(
    hift: HiFTGenerator, f0: torch.Tensor, samples: list[int], generators: list[torch.Generator]
) -> torch.Tensor:
    """The NSF source of every row, batched except the draws (each row's from its own generator, its own length)."""
    src = hift.m_source
    batch = f0.shape[0]
    n_max = f0.shape[1] * hift.upsample_factor
    device = f0.device
    f0_up = f0[:, None, :].float().repeat_interleave(hift.upsample_factor, dim=-1)  # [B, 1, N]
    # Reference draw 1 (SourceModuleHnNSF.draw_phase) made on the generator's device: Uniform(-pi, pi) as
    # low + rand * (high - low) in float32, the same two roundings as on the host, without a round trip there.
    low, high = torch.tensor(-math.pi, dtype=torch.float32), torch.tensor(math.pi, dtype=torch.float32)
    rows = [torch.rand((1, src.harmonic_num + 1, 1), generator=g, device=g.device) for g in generators]
    if len({r.device for r in rows}) > 1:  # generators on several devices (e.g. a caller's CPU one): move each
        rows = [to_device(r, device) for r in rows]
    u = to_device(torch.cat(rows), device)
    phase = low + u * (high - low)  # 0-dim host tensors enter a CUDA op as scalars: no copy
    phase[:, 0, :] = 0
    harmonics = torch.arange(1, src.harmonic_num + 2, device=device, dtype=torch.float32)
    f_mat = f0_up * harmonics[None, :, None] / src.sampling_rate
    # cumsum is causal: each row's prefix is what its own call computes (up to the scan's rounding).
    theta = 2 * math.pi * (torch.cumsum(f_mat, dim=-1) % 1)
    sine = src.sine_amp * torch.sin(theta + phase)
    uv = (f0_up > src.voiced_threshold).to(torch.float32)
    noise_amp = uv * src.noise_std + (1 - uv) * src.sine_amp / 3
    draws = torch.zeros(batch, src.harmonic_num + 1, n_max, device=device)
    for b, (g, n) in enumerate(zip(generators, samples, strict=True)):
        # Drawn as [H + 1, n], the reference's [1, H + 1, n] (a draw fills its elements in order). The reference's
        # third draw ([1, n, 1], unused) is skipped: it only moves the generator on, and a chunk's generator is
        # not drawn from after HiFT (one generator per row and chunk: see `ChunkRequest.generator`).
        row = torch.randn((src.harmonic_num + 1, n), generator=g, device=g.device)
        draws[b, :, :n] = row if row.device == device else to_device(row, device)
    sine = sine * uv + noise_amp * draws
    merged = torch.tanh(F.linear(sine.transpose(1, 2), src.l_linear.weight.float(), src.l_linear.bias.float()))
    return merged.transpose(1, 2)  # [B, 1, N]


def _source_stft(hift: HiFTGenerator, source: torch.Tensor, samples: list[int]) -> torch.Tensor:
    """torch.stft(center=True) of each row at its own length, zero past its frames: [B, 2F, N/hop + 1]."""
    n_fft, hop = hift.cfg.istft_n_fft, hift.cfg.istft_hop_len
    pad = n_fft // 2
    s = source.squeeze(1).float()
    n_max = s.shape[1]
    # Reflect each row at its own end, as the centred STFT of its own call does: one gather for the batch.
    n = lengths_tensor(samples, s.device)[:, None]
    idx = torch.arange(n_max + 2 * pad, device=s.device)[None, :] - pad
    idx = idx.abs()  # left edge: x[-k] -> x[k]
    idx = torch.where(idx >= n, 2 * (n - 1) - idx, idx)  # right edge: x[n-1+k] -> x[n-1-k]
    inside = (idx >= 0) & (torch.arange(n_max + 2 * pad, device=s.device)[None, :] < n + 2 * pad)
    padded = torch.gather(s, 1, idx.clamp(0, n_max - 1)) * inside
    spec = torch.stft(padded, n_fft, hop, n_fft, window=hift.stft_window.float(), center=False, return_complex=True)
    out = torch.cat([spec.real, spec.imag], dim=1)  # [B, 2F, frames]
    frames = [n // hop + 1 for n in samples]
    mask = _mask(frames, out.shape[-1], out.device, out.dtype)
    return _m(out, mask)


def _istft(hift: HiFTGenerator, spec: torch.Tensor, frames: list[int]) -> torch.Tensor:
    """torch.istft(center=True) of each row's first frames[b] frames, written out: [B, hop * (F_max - 1)]."""
    n_fft, hop = hift.cfg.istft_n_fft, hift.cfg.istft_hop_len
    window = hift.stft_window.float()
    batch, _, f_max = spec.shape
    fmask = _mask(frames, f_max, spec.device, torch.float32)
    fmask = torch.ones(batch, 1, f_max, device=spec.device) if fmask is None else fmask
    y = torch.fft.irfft(spec, n=n_fft, dim=1) * window[None, :, None] * fmask  # [B, n_fft, F]
    length = n_fft + hop * (f_max - 1)
    ola = F.fold(y, (1, length), (1, n_fft), stride=(1, hop)).reshape(batch, length)
    env_frames = window.square()[None, :, None] * fmask  # each row's envelope counts its own frames only
    env = F.fold(env_frames, (1, length), (1, n_fft), stride=(1, hop)).reshape(batch, length)
    pad = n_fft // 2
    ola, env = ola[:, pad : length - pad], env[:, pad : length - pad]
    return ola / torch.where(env > 1e-11, env, torch.ones_like(env))


def _decode(hift: HiFTGenerator, mel: torch.Tensor, source: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """`HiFTGenerator.decode` on a zero-padded batch, every layer re-masked to each row's length: [B, N_max]."""
    cfg = hift.cfg
    dtype = hift.conv_pre.weight.dtype
    device = mel.device
    up = hift.upsample_factor
    samples = [t * up for t in lengths]
    s_stft = _source_stft(hift, source, samples).to(dtype)

    rate = 1
    x = _m(hift.conv_pre(mel.to(dtype)), _mask(lengths, mel.shape[-1], device, dtype))
    n_kernels = len(cfg.resblock_kernel_sizes)
    for i, up_layer in enumerate(hift.ups):
        rate *= cfg.upsample_rates[i]
        x = up_layer(F.leaky_relu(x, cfg.lrelu_slope))
        last = i == len(hift.ups) - 1
        if last:
            x = _m(x, _mask([t * rate for t in lengths], x.shape[-1], device, dtype))
            x = hift.reflection_pad(x)
        stage = [t * rate + (1 if last else 0) for t in lengths]
        mask = _mask(stage, x.shape[-1], device, dtype)
        x = _m(x, mask)
        x = x + hift.source_resblocks[i](_m(hift.source_downs[i](s_stft), mask), mask)
        xs = hift.resblocks[i * n_kernels](x, mask)
        for j in range(1, n_kernels):
            xs = xs + hift.resblocks[i * n_kernels + j](x, mask)
        x = xs / n_kernels

    x = hift.conv_post(F.leaky_relu(x)).float()
    n_bins = cfg.istft_n_fft // 2 + 1
    magnitude = torch.clip(torch.exp(x[:, :n_bins, :]), max=1e2)
    phase = torch.sin(x[:, n_bins:, :])
    spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
    frames = [n // cfg.istft_hop_len + 1 for n in samples]
    wav = _istft(hift, spec, frames)
    return torch.clamp(wav, -cfg.audio_limit, cfg.audio_limit)


@torch.no_grad()
def vocode_ragged(
    hift: HiFTGenerator,
    mels: list[torch.Tensor],
    cache_sources: list[torch.Tensor | None],
    sources: list[torch.Tensor | None],
    generators: list[torch.Generator],
    frame_bucket: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """HiFT for rows of any lengths in one pass: mels [80, T_b] -> [(wav [1, 256 T_b], source [1, 1, 256 T_b])].

    ``frame_bucket`` > 0 pads the pass to a multiple of that many frames (masked like any row's padding): the
    convolutions then see a few shapes, not a new one per pass (a backend builds and caches a plan per shape).

    Row b equals ``hift.inference(mels[b][None], cache_sources[b], sources[b], generators[b])`` up to float
    rounding. ``sources[b]`` (an injected source [.., N_b]) skips that row's F0 and draws; ``cache_sources[b]``
    ([.., S]) overwrites the first S source samples.
    """
    if not mels:
        return []
    device = hift.conv_pre.weight.device
    lengths = [int(m.shape[-1]) for m in mels]
    if min(lengths) < 1:
        raise ValueError("every row needs at least one mel frame")
    t_max = max(lengths)
    t_max = -(-t_max // frame_bucket) * frame_bucket if frame_bucket > 0 else t_max
    mel = torch.zeros(len(mels), hift.cfg.in_channels, t_max, device=device)
    for b, m in enumerate(mels):
        mel[b, :, : lengths[b]] = to_device(m, device, torch.float32)
    wav, source = vocode_padded(hift, mel, lengths, cache_sources, sources, generators)
    samples = [t * hift.upsample_factor for t in lengths]
    return [(wav[b : b + 1, : samples[b]], source[b : b + 1, :, : samples[b]]) for b in range(len(mels))]


@torch.no_grad()
def vocode_padded(
    hift: HiFTGenerator,
    mel: torch.Tensor,
    lengths: list[int],
    cache_sources: list[torch.Tensor | None],
    sources: list[torch.Tensor | None],
    generators: list[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """`vocode_ragged` on a batch already padded: mel [B, 80, T] float32, zero past row b's `lengths[b]` frames.
    Returns wav [B, N] and source [B, 1, N] (N = 256 T), row b valid over its first 256 lengths[b] samples."""
    device = mel.device
    if min(lengths) < 1:
        raise ValueError("every row needs at least one mel frame")
    up = hift.upsample_factor
    samples = [t * up for t in lengths]
    t_max = mel.shape[-1]
    mask = _mask(lengths, t_max, device, torch.float32)

    drawn = [b for b, s in enumerate(sources) if s is None]
    source = torch.zeros(len(lengths), 1, t_max * up, device=device)
    if len(drawn) == len(lengths):  # the serving case: no injected source, no indexing
        f0 = _f0(hift, mel, mask)
        source = _sources(hift, f0, samples, generators)
    elif drawn:
        # A Python list as an index would be copied to the GPU with a stream sync: copy it the pinned way.
        rows = lengths_tensor(drawn, device)
        f0 = _f0(hift, mel.index_select(0, rows), None if mask is None else mask.index_select(0, rows))
        part = _sources(hift, f0, [samples[b] for b in drawn], [generators[b] for b in drawn])
        source.index_copy_(0, rows, part)
    for b, s in enumerate(sources):
        if s is not None:
            if s.numel() != samples[b]:
                raise ValueError(f"source must have {samples[b]} samples, got {s.numel()}")
            source[b, 0, : samples[b]] = to_device(s.reshape(-1), device, torch.float32)
    _splice_caches(source, cache_sources, samples)
    # Past each row's end the source must be zero too (the F0 there is garbage): the STFT pads per row anyway.
    source = _m(source, _mask(samples, t_max * up, device, torch.float32))
    return _decode(hift, mel, source, lengths), source


def _splice_caches(source: torch.Tensor, caches: list[torch.Tensor | None], samples: list[int]) -> None:
    """Overwrite each row's first source samples with its cache: one copy for the rows whose caches are equally
    long (a stream's is always 256 samples), one per row otherwise."""
    rows = [b for b, c in enumerate(caches) if c is not None and c.shape[-1] > 0]
    for b in rows:
        if caches[b].shape[-1] > samples[b]:
            raise ValueError(f"cache_source has {caches[b].shape[-1]} samples; the row has {samples[b]}")
    if not rows:
        return
    width = caches[rows[0]].shape[-1]
    if all(caches[b].shape[-1] == width for b in rows):
        values = to_device(torch.cat([caches[b].reshape(1, -1) for b in rows]), source.device, torch.float32)
        source[:, 0, :width].index_copy_(0, lengths_tensor(rows, source.device), values)
        return
    for b in rows:
        source[b, 0, : caches[b].shape[-1]] = to_device(caches[b].reshape(-1), source.device, torch.float32)
