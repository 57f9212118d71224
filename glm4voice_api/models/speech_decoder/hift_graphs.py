"""HiFT's padded pass as one CUDA graph per shape bucket (`GraphedHiFT`), beside the flow's graphs (`flow_graphs.py`).

Why: outside the flow's graphed ODE a decoder pass is launched op by op from Python, and HiFT is most of that (~420
ops per pass, `hift_ragged.vocode_padded`). With the LLM in the same process each launch may wait for the GIL behind
vLLM's busy engine thread (on the CPU, 2000 small ops took 981 ms beside one never-idle Python thread). A graph
replay is one launch for all of them, plus the per-row random draws, which stay eager (each row draws from its own
generator, as `vocode_padded` does, so the values are the same).

A graph has fixed shapes, so a pass is padded to a bucket: its rows up to the next of the flow graphs' batch buckets
(padding rows get length 1, zero mel and draws and no cache: finite values, never mixed into real rows) and its
frames up to a multiple of `frame_bucket` (masked like any row's padding, `hift_core.py`). The graph runs
`hift_core.hift_core` on static buffers and copies its outputs into static output buffers; the caller's rows are
cut out and cloned before the next replay. `use_graphs=False` runs the same buffers and code eagerly: the CPU test
path (`tests/models/test_hift_graphs.py`), and a switch for debugging.

Memory: every bucket's static buffers are views of one shared arena (the largest bucket's size; `warmup` reserves
it), graphs share one memory pool and their own capture stream, beyond `max_graphs` a bucket runs eagerly through
the same buffers (`graph_buckets.py`, shared with the flow front's runner). Per-bucket buffers would be ~7 GB at
102 buckets (the noise alone is 9 x 256 floats per frame and row). Not thread safe: one decoder thread calls it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from glm4voice_api.models.speech_decoder.flow_graphs import batch_buckets, padded_batch
from glm4voice_api.models.speech_decoder.graph_buckets import BucketGraphs, StaticBucket
from glm4voice_api.models.speech_decoder.hift import HiFTGenerator
from glm4voice_api.models.speech_decoder.hift_core import draw_rows, hift_core
from glm4voice_api.models.speech_decoder.hift_ragged import vocode_padded
from glm4voice_api.models.speech_decoder.transfer import lengths_tensor, to_device

__all__ = ["GraphedHiFT", "HiFTGraphConfig"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HiFTGraphConfig:
    frame_bucket: int = 64
    """Frames are padded up to a multiple of this. 64: a pass's HiFT input runs from ~70 frames (a reply's first
    chunk) to ~1080 (156 tokens + the cache frame): 17 frame buckets x 6 batch buckets, of which the 64 within
    `max_rows_frames` are captured; at most 63 padded frames (0.7 s of audio) of HiFT work per pass. Finer buckets:
    more graphs, more capture time at startup, less padding."""
    max_graphs: int = 128
    """Most graphs captured (then new buckets run eagerly through the same static buffers)."""
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """Rows a pass is padded to (the flow graphs' by default; beyond the last: a power of two)."""
    max_frames: int = 2048
    """Longer passes run `vocode_padded` eagerly, without static buffers (rare: the chunk schedule bounds them)."""
    cache_width: int = 256
    """Most cache samples per row (a stream carries one frame's: 256); a longer cache runs `vocode_padded`."""
    max_rows_frames: int = 4096
    """Buckets of more padded rows x frames run `vocode_padded` eagerly. A graph pays only where launches dominate
    (H100, `bench/check_hift_graphs.py`: 3.9x at 1x64, 2.2x at 8x64, 1.5x at 8x256, 1.04x at 8x1088, 1.0x at
    32x1088), while its pool keeps the bucket's peak activations (5.2 GiB at 32x1088): capturing the large buckets
    beside vLLM ran the device out of memory (cuBLAS could not create a handle)."""
    max_rows: int = 32
    """Passes of more rows run `vocode_padded` eagerly (the served default is 1, `SpeechDecoderSettings.hift_graph_rows`:
    graphs on every bucket made the 32-stream level slower on an H100, bench/results/GPU.md session 23)."""


class _Bucket(StaticBucket):
    """One bucket's static buffers (views of the shared arenas) and its graph."""

    def __init__(
        self, batch: int, frames: int, hift: HiFTGenerator, width: int, floats: torch.Tensor, ints: torch.Tensor
    ) -> None:
        h1 = hift.m_source.harmonic_num + 1
        n = frames * hift.upsample_factor
        views = []
        at = 0
        for shape in (
            (batch, hift.cfg.in_channels, frames),  # mel
            (batch, h1, 1),  # phase uniforms
            (batch, h1, n),  # noise
            (batch, width),  # cache samples
            (batch, n),  # wav (out)
            (batch, 1, n),  # source (out)
        ):
            views.append(floats[at : at + math.prod(shape)].view(shape))
            at += math.prod(shape)
        self.mel, self.phase_u, self.noise, self.cache, self.wav, self.source = views
        self.ints = ints[: 2 * batch].view(2, batch)  # row lengths (frames), cache lengths (samples)

    def args(self) -> tuple[torch.Tensor, ...]:
        return self.mel, self.ints[0], self.phase_u, self.noise, self.cache, self.ints[1]


class GraphedHiFT(BucketGraphs[_Bucket]):
    """`vocode_padded(hift, mel, lengths, caches, [None] * rows, generators)` through bucketed CUDA graphs."""

    label = "HiFT"
    key_format = "batch=%d frames=%d"
    log = logger

    def __init__(self, hift: HiFTGenerator, config: HiFTGraphConfig | None = None, *, use_graphs: bool = True) -> None:
        # The own capture stream (`graph_buckets.py`) matters here too: HiFT's F0 classifier and source merge are GEMMs.
        super().__init__(config or HiFTGraphConfig(), use_graphs)
        self.hift = hift
        self.batch_buckets = batch_buckets(self.config.batch_buckets)

    def set_batch_buckets(self, sizes: object) -> None:
        """Pad later passes to these row counts (graphs of other sizes stay captured)."""
        self.batch_buckets = batch_buckets(sizes)

    def bucket(self, rows: int, frames: int) -> tuple[int, int]:
        step = self.config.frame_bucket
        return padded_batch(rows, self.batch_buckets), -(-frames // step) * step

    def _sizes(self, key: tuple[int, int]) -> tuple[int, int]:
        batch, frames = key
        h1 = self.hift.m_source.harmonic_num + 1
        n = frames * self.hift.upsample_factor
        floats = batch * (self.hift.cfg.in_channels * frames + h1 + h1 * n + self.config.cache_width + 2 * n)
        return floats, 2 * batch

    def _new_arena(self, floats: int, ints: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.hift.conv_pre.weight.device
        return torch.zeros(floats, device=device), torch.ones(ints, dtype=torch.long, device=device)

    def _views(self, key: tuple[int, int], arena: tuple[torch.Tensor, torch.Tensor]) -> _Bucket:
        return _Bucket(key[0], key[1], self.hift, self.config.cache_width, *arena)

    def _device(self, buf: _Bucket) -> torch.device:
        return buf.mel.device

    @torch.inference_mode()
    def reserve(self, max_batch: int, max_frames: int) -> None:
        """Allocate the arena for the largest bucket of up to (max_batch rows, max_frames frames) now, unless one
        that large exists: every smaller bucket's buffers then fit in it."""
        key = self.bucket(max_batch, max_frames)
        if not self._has_arena(self._sizes(key)[0], 0):
            self._reserve(key)

    def _graphable(self, key: tuple[int, int]) -> bool:
        return (
            key[0] <= self.config.max_rows
            and key[1] <= self.config.max_frames
            and key[0] * key[1] <= self.config.max_rows_frames
        )

    def frame_buckets(self, max_frames: int) -> list[int]:
        step = self.config.frame_bucket
        top = -(-min(max_frames, self.config.max_frames) // step) * step
        return list(range(step, top + 1, step))

    @torch.inference_mode()
    def warmup(self, max_batch: int, max_frames: int) -> int:
        """Capture every bucket up to (max_batch rows, max_frames frames) now, so that no pass waits for a capture.
        The arena is reserved at the largest bucket's size first, so that every bucket's buffers fit in it."""
        if not self.use_graphs:
            return 0
        sizes = sorted({padded_batch(rows, self.batch_buckets) for rows in range(1, max_batch + 1)})
        frames = self.frame_buckets(max_frames)
        if not frames:
            return len(self._graphs)
        keys = [(b, t) for t in frames for b in sizes if self._graphable((b, t))]
        if not keys:
            return len(self._graphs)
        largest = max(keys, key=lambda k: self._sizes(k)[0])
        if not self._has_arena(self._sizes(largest)[0], 0):
            self._reserve(largest)
        return self._capture_all(keys)

    @torch.inference_mode()
    def __call__(
        self,
        mel: torch.Tensor,
        lengths: list[int],
        caches: list[torch.Tensor | None],
        generators: list[torch.Generator],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mel [R, 80, T] float32, zero past row b's lengths[b] frames -> wav [R, N], source [R, 1, N] (N = 256 T):
        `vocode_padded` without injected sources, row b valid over its first 256 lengths[b] samples."""
        rows, _, frames = mel.shape
        if min(lengths) < 1:
            raise ValueError("every row needs at least one mel frame")
        up = self.hift.upsample_factor
        samples = [t * up for t in lengths]
        widths = [0 if c is None else c.shape[-1] for c in caches]
        for w, n in zip(widths, samples, strict=True):
            if w > n:
                raise ValueError(f"cache_source has {w} samples; the row has {n}")
        key = self.bucket(rows, frames)
        if not self._graphable(key) or max(widths) > self.config.cache_width:
            return vocode_padded(self.hift, mel, lengths, caches, [None] * rows, generators)
        buf = self._bucket_for(key)
        self._fill(buf, mel, lengths, widths, caches, generators, samples)
        self._replay(buf)
        # Cloned: the next pass (any bucket: one arena) overwrites these buffers.
        return buf.wav[:rows, : frames * up].clone(), buf.source[:rows, :, : frames * up].clone()

    def _fill(
        self,
        buf: _Bucket,
        mel: torch.Tensor,
        lengths: list[int],
        widths: list[int],
        caches: list[torch.Tensor | None],
        generators: list[torch.Generator],
        samples: list[int],
    ) -> None:
        """The pass's inputs into the bucket's buffers; padding rows and frames zero, padding rows of length 1."""
        rows, _, frames = mel.shape
        batch = buf.mel.shape[0]
        device = buf.mel.device
        buf.mel.zero_()
        buf.mel[:rows, :, :frames].copy_(mel)
        ints = torch.tensor([lengths + [1] * (batch - rows), widths + [0] * (batch - rows)], dtype=torch.long)
        buf.ints.copy_(to_device(ints, device))  # one host-to-device copy, without a sync
        buf.phase_u.zero_()
        buf.noise.zero_()
        draw_rows(self.hift, generators, samples, buf.phase_u, buf.noise)
        buf.cache.zero_()
        cached = [b for b, w in enumerate(widths) if w > 0]
        if not cached:
            return
        width = widths[cached[0]]
        if all(widths[b] == width for b in cached):  # a stream's caches are all 256 samples: one copy
            values = to_device(torch.cat([caches[b].reshape(1, -1) for b in cached]), device, torch.float32)
            buf.cache[:, :width].index_copy_(0, lengths_tensor(cached, device), values)
            return
        for b in cached:
            buf.cache[b, : widths[b]].copy_(caches[b].reshape(-1))

    def _run(self, buf: _Bucket) -> None:
        wav, source = hift_core(self.hift, *buf.args())
        buf.wav.copy_(wav)
        buf.source.copy_(source)

    def _prime(self, buf: _Bucket) -> None:
        # The warm-up run before each capture (on the capture stream) also creates cuFFT's plans for the source STFT
        # and the inverse's irfft (a plan cannot be created inside a capture; torch's plan cache keeps them for the
        # replay's shapes) and builds Snake's cached terms and any compiled kernels. A captured FFT keeps using its
        # plan: two plans per bucket stay far below the plan cache's capacity (4096 by default;
        # `torch.backends.cuda.cufft_plan_cache.max_size`), so none is evicted while its graph lives.
        buf.ints[0].fill_(1)  # a valid pass for the warm-up run: every row one frame, no cache
        buf.ints[1].zero_()
