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

import torch

from glm4voice_api.models.speech_decoder.hift import HiFTGenerator
from glm4voice_api.models.speech_decoder.hift_masked import Rows, decode, f0, istft, list_mask, masked, sine_source
from glm4voice_api.models.speech_decoder.transfer import lengths_tensor, to_device

__all__ = ["vocode_padded", "vocode_ragged"]


def _sources(
    hift: HiFTGenerator, f0: torch.Tensor, samples: list[int], generators: list[torch.Generator]
) -> torch.Tensor:
    """The NSF source of every row, batched except the draws (each row's from its own generator, its own length)."""
    src = hift.m_source
    batch = f0.shape[0]
    n_max = f0.shape[1] * hift.upsample_factor
    device = f0.device
    f0_up = f0[:, None, :].float().repeat_interleave(hift.upsample_factor, dim=-1)  # [B, 1, N]
    # Reference draw 1 (SourceModuleHnNSF.draw_phase) made on the generator's device, without a round trip to the
    # host (`sine_source` turns it into the phase).
    rows = [torch.rand((1, src.harmonic_num + 1, 1), generator=g, device=g.device) for g in generators]
    if len({r.device for r in rows}) > 1:  # generators on several devices (e.g. a caller's CPU one): move each
        rows = [to_device(r, device) for r in rows]
    u = to_device(torch.cat(rows), device)
    draws = torch.zeros(batch, src.harmonic_num + 1, n_max, device=device)
    for b, (g, n) in enumerate(zip(generators, samples, strict=True)):
        # Drawn as [H + 1, n], the reference's [1, H + 1, n] (a draw fills its elements in order). The reference's
        # third draw ([1, n, 1], unused) is skipped: it only moves the generator on, and a chunk's generator is
        # not drawn from after HiFT (one generator per row and chunk: see `ChunkRequest.generator`).
        row = torch.randn((src.harmonic_num + 1, n), generator=g, device=g.device)
        draws[b, :, :n] = row if row.device == device else to_device(row, device)
    return sine_source(hift, f0_up, u, draws)


def _istft(hift: HiFTGenerator, spec: torch.Tensor, frames: list[int]) -> torch.Tensor:
    """torch.istft(center=True) of each row's first frames[b] frames, written out: [B, hop * (F_max - 1)]."""
    return istft(hift, spec, list_mask(frames, spec.shape[-1], spec.device, torch.float32))


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
    mask = list_mask(lengths, t_max, device, torch.float32)

    drawn = [b for b, s in enumerate(sources) if s is None]
    source = torch.zeros(len(lengths), 1, t_max * up, device=device)
    if len(drawn) == len(lengths):  # the serving case: no injected source, no indexing
        source = _sources(hift, f0(hift, mel, mask), samples, generators)
    elif drawn:
        # A Python list as an index would be copied to the GPU with a stream sync: copy it the pinned way.
        rows = lengths_tensor(drawn, device)
        f0_part = f0(hift, mel.index_select(0, rows), None if mask is None else mask.index_select(0, rows))
        part = _sources(hift, f0_part, [samples[b] for b in drawn], [generators[b] for b in drawn])
        source.index_copy_(0, rows, part)
    for b, s in enumerate(sources):
        if s is not None:
            if s.numel() != samples[b]:
                raise ValueError(f"source must have {samples[b]} samples, got {s.numel()}")
            source[b, 0, : samples[b]] = to_device(s.reshape(-1), device, torch.float32)
    _splice_caches(source, cache_sources, samples)
    # Past each row's end the source must be zero too (the F0 there is garbage): the STFT pads per row anyway.
    source = masked(source, list_mask(samples, t_max * up, device, torch.float32))
    return decode(hift, mel, source, Rows(lengths, device)), source


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
