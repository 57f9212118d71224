"""HiFT's padded pass (`hift_ragged.vocode_padded`) as a function of device tensors only, for CUDA graph capture.

Why: `vocode_padded` is ~420 eager ops per pass, each launched from Python; with the LLM in the same process each
launch may wait for the GIL behind vLLM's engine thread. A CUDA graph replays them all at once, but a graph has
fixed shapes and cannot hold host work, so this function has no host synchronisation (no `.item()`, `.tolist()`,
boolean indexing, Python branch on tensor values or Python list of lengths): the row lengths, the random draws and
the cache splice come in as tensors, every mask is computed from the lengths tensor.

Exact: the same ops in the same order as `hift_ragged.py`, on the same shapes (the F0 predictor, the source's sine
part and the decode are one code, `hift_masked.py`, fed a lengths tensor here). The two differences change no value:
masks are always applied (`vocode_padded` skips a mask of all ones: x * 1.0 == x), and the cache splice is a
`torch.where` on positions instead of an `index_copy_` (both copy values). The draws are made per row outside,
from each row's generator in the reference's order and shapes (`draw_rows`), so they are the same numbers
(`tests/models/test_hift_graphs.py` compares with `torch.equal`).
"""

from __future__ import annotations

import torch

from glm4voice_api.models.speech_decoder.hift import HiFTGenerator
from glm4voice_api.models.speech_decoder.hift_masked import Rows, decode, f0, sine_source, tensor_mask
from glm4voice_api.models.speech_decoder.transfer import to_device

__all__ = ["draw_rows", "hift_core"]


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


def _sources(hift: HiFTGenerator, f0_rows: torch.Tensor, phase_u: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """`hift_ragged._sources` with the draws given: phase_u [B, H+1, 1] uniforms, noise [B, H+1, N]."""
    up = hift.upsample_factor
    batch, frames = f0_rows.shape
    # Nearest upsampling as expand + reshape: the values of `repeat_interleave(up, dim=-1)` (a copy of each frame's
    # F0) without relying on how a given torch version sizes its output (a tensor-repeats path syncs with the host).
    f0_up = f0_rows[:, None, :, None].float().expand(batch, 1, frames, up).reshape(batch, 1, frames * up)  # [B, 1, N]
    return sine_source(hift, f0_up, phase_u, noise)


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
    source = _sources(hift, f0(hift, mel, tensor_mask(lengths, t_max, torch.float32)), phase_u, noise)
    # The cache splice (`hift_ragged._splice_caches`) as a select on positions: the same values, no row index.
    width = min(cache.shape[-1], n_max)
    pos = torch.arange(width, device=mel.device)
    head = torch.where(pos[None, :] < cache_len[:, None], cache[:, :width], source[:, 0, :width])
    source = torch.cat([head, source[:, 0, width:]], dim=-1)[:, None, :]
    source = source * tensor_mask(samples, n_max, torch.float32)
    return decode(hift, mel, source, Rows(lengths, mel.device)), source
