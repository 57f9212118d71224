"""Bucketed, CUDA-graph-captured flow-matching ODE (the decoder's hot loop).

Why: one decoder chunk runs the flow estimator 10 times (Euler steps), each pass on [2B, 80, T] and each pass
~1000 small kernels. On a GPU at small batch the launches, not the math, take the time (measured: ~0.4-0.7 s per
chunk whatever its size). Capturing the whole 10-step loop as one CUDA graph turns those launches into one
replay.

A graph has fixed shapes, so inputs are padded to a bucket: the frame count up to a multiple of `frame_bucket`
(padded frames carry mask 0, which the estimator already honours everywhere: masked GroupNorm, attention bias,
masked convolutions), and the batch up to the next power of two (extra rows are all-valid zeros, so they cannot
produce NaNs; rows never mix). Each row's valid frames are therefore the same as in the eager, unpadded pass (up
to float rounding), which `tests/models/test_flow_graphs.py` checks on the CPU through the same padding path.

Graphs are captured lazily on the first chunk of each bucket, share one memory pool (they are replayed one at a
time on one stream and their outputs are copied out before the next replay), and are evicted least recently used
beyond `max_graphs`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlowGraphConfig:
    frame_bucket: int = 256
    """Frames are padded up to a multiple of this (fewer, larger buckets: fewer captures, more padding)."""
    max_graphs: int = 96
    """Captured graphs kept (least recently used evicted); 7 frame buckets x 6 batch buckets by default."""
    max_frames: int = 4096
    """Longer inputs run eagerly (rare: the decoder bounds its context, see decoder_max_prompt_tokens)."""


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class _Captured:
    """One bucket's static input buffers, its graph and its output buffer."""

    def __init__(self, batch: int, frames: int, like: torch.Tensor, mel: int) -> None:
        dev, dt = like.device, like.dtype
        self.z = torch.zeros(batch, mel, frames, device=dev, dtype=dt)
        self.mu = torch.zeros(batch, mel, frames, device=dev, dtype=dt)
        self.cond = torch.zeros(batch, mel, frames, device=dev, dtype=dt)
        self.mask = torch.ones(batch, 1, frames, device=dev, dtype=dt)
        self.spks = torch.zeros(batch, mel, device=dev, dtype=dt)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None


class GraphedCFM:
    """Drop-in for `ConditionalCFM.forward(z, mask, mu, spks, cond)` with bucket padding and CUDA graphs.

    `use_graphs=False` keeps the bucket padding but runs eagerly: the CPU test path, and a switch for debugging.
    """

    def __init__(self, cfm: torch.nn.Module, config: FlowGraphConfig | None = None, *, use_graphs: bool = True) -> None:
        self.cfm = cfm
        self.config = config or FlowGraphConfig()
        self.use_graphs = use_graphs
        self._graphs: OrderedDict[tuple[int, int], _Captured] = OrderedDict()
        self._pool = None
        self.captures = 0
        self.capture_seconds = 0.0

    def bucket(self, batch: int, frames: int) -> tuple[int, int]:
        step = self.config.frame_bucket
        return _pow2_at_least(batch), -(-frames // step) * step

    def warmup(self, max_batch: int, max_frames: int, like: torch.Tensor) -> int:
        """Capture every bucket up to (max_batch, max_frames) now, so that no request waits for a capture."""
        if not self.use_graphs:
            return 0
        b_max, t_max = self.bucket(max_batch, min(max_frames, self.config.max_frames))
        mel = self.cfm.cfg.output_size
        for t in range(self.config.frame_bucket, t_max + 1, self.config.frame_bucket):
            b = 1
            while b <= b_max:
                if (b, t) not in self._graphs:
                    self._capture((b, t), like, mel)
                b *= 2
        return len(self._graphs)

    def __call__(
        self, z: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        batch, mel, frames = mu.shape
        if frames > self.config.max_frames:
            return self.cfm(z, mask, mu, spks, cond)
        b_pad, t_pad = self.bucket(batch, frames)
        if not self.use_graphs:
            buf = _Captured(b_pad, t_pad, mu, mel)
            _fill(buf, z, mask, mu, spks, cond)
            return self.cfm(buf.z, buf.mask, buf.mu, buf.spks, buf.cond, padded=True)[:batch, :, :frames]
        key = (b_pad, t_pad)
        buf = self._graphs.get(key)
        if buf is None:
            buf = self._capture(key, mu, mel)
        else:
            self._graphs.move_to_end(key)
        _fill(buf, z, mask, mu, spks, cond)
        buf.graph.replay()  # type: ignore[union-attr]
        # Cloned: the next replay (any bucket, shared pool) may overwrite this memory.
        return buf.out[:batch, :, :frames].clone()  # type: ignore[index]

    def _capture(self, key: tuple[int, int], like: torch.Tensor, mel: int) -> _Captured:
        start = time.perf_counter()
        while len(self._graphs) >= self.config.max_graphs:
            self._graphs.popitem(last=False)
        buf = _Captured(key[0], key[1], like, mel)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # Warm-up on a side stream first (cuDNN/cuBLAS pick their algorithms and workspaces outside the capture).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.cfm(buf.z, buf.mask, buf.mu, buf.spks, buf.cond, padded=True)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            buf.out = self.cfm(buf.z, buf.mask, buf.mu, buf.spks, buf.cond, padded=True)
        buf.graph = graph
        self._graphs[key] = buf
        self.captures += 1
        self.capture_seconds += time.perf_counter() - start
        logger.debug("captured flow graph batch=%d frames=%d", *key)
        return buf


def _fill(
    buf: _Captured, z: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
) -> None:
    b, _, t = mu.shape
    for static, value in ((buf.z, z), (buf.mu, mu), (buf.cond, cond)):
        static.zero_()
        static[:b, :, :t].copy_(value)
    buf.mask.fill_(1.0)  # padding rows stay all-valid (no NaN from empty softmax rows); they are cut off
    buf.mask[:b].zero_()
    buf.mask[:b, :, :t].copy_(mask)
    buf.spks.zero_()
    buf.spks[:b].copy_(spks)
