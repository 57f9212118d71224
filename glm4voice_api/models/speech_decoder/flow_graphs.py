"""Bucketed, CUDA-graph-captured flow-matching ODE (the decoder's hot loop).

Why: one decoder chunk runs the flow estimator 10 times (Euler steps), each pass on [2B, 80, T] and each pass
~1000 small kernels. On a GPU at small batch the launches, not the math, take the time (measured: ~0.4-0.7 s per
chunk whatever its size). Capturing one Euler step as a CUDA graph and replaying it per step turns those launches
into ten replays.

A graph has fixed shapes, so inputs are padded to a bucket: the frame count up to a multiple of `frame_bucket`
(padded frames carry mask 0, which the estimator already honours everywhere: masked GroupNorm, attention bias,
masked convolutions), and the batch up to the next of `batch_buckets` (powers of two by default; extra rows are
all-valid zeros, so they cannot produce NaNs; rows never mix). A padded row costs as much as a real one once a pass
is large (one ODE step at 32 rows took 1.9x the time at 16 on an H200), so finer batch buckets (24 beside 16 and
32) trade capture time and memory at startup for less padding. Each row's valid frames are therefore the same as in the eager, unpadded pass (up
to float rounding), which `tests/models/test_flow_graphs.py` checks on the CPU through the same padding path.

Graphs are captured before serving (`warmup`) or on the first chunk of a bucket, share one memory pool (they are
replayed one at a time on one stream and their outputs are copied out before the next replay). Beyond `max_graphs`
a bucket runs eagerly: a graph is never destroyed while others live, because destroying one frees the cuBLAS
workspace of its capture stream, which the other graphs captured there still use (pytorch/pytorch#193402).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from glm4voice_api.models.speech_decoder.graph_buckets import CAPTURE_ERROR_MODE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FlowGraphConfig:
    frame_bucket: int = 256
    """Frames are padded up to a multiple of this (fewer, larger buckets: fewer captures, more padding)."""
    small_frames: int = 512
    """Up to this many frames, buckets are `frame_bucket // 2` apart: a reply's first chunks (68 and 179 frames for
    10 and 10 + 16 tokens) would otherwise be padded up to 2-4x, and bursts of new streams decode many of them."""
    max_graphs: int = 128
    """Most graphs captured (then new buckets run eagerly); 9 frame buckets x 6 batch buckets by default."""
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """Batch sizes the graphs are captured for; a pass is padded up to the next (beyond the last: a power of two)."""
    max_frames: int = 4096
    """Longer inputs run eagerly (rare: the decoder bounds its context, see decoder_max_prompt_tokens)."""


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def padded_batch(rows: int, buckets: tuple[int, ...] | None = None) -> int:
    """The batch a pass of `rows` is padded to: the smallest bucket that holds it (a power of two beyond the last
    bucket, or with no buckets given)."""
    return next((b for b in buckets or () if b >= rows), None) or _pow2_at_least(rows)


def batch_buckets(sizes: object) -> tuple[int, ...]:
    """Sorted, distinct, positive batch sizes (ValueError otherwise)."""
    out = tuple(sorted({int(b) for b in sizes}))  # type: ignore[attr-defined]
    if not out or out[0] < 1:
        msg = f"batch buckets must be positive sizes, got {sizes!r}"
        raise ValueError(msg)
    return out


class _Captured:
    """One bucket's static buffers (the ODE state, the doubled CFG inputs, the step's t and dt) and its graph."""

    def __init__(self, batch: int, frames: int, like: torch.Tensor, mel: int) -> None:
        dev, dt = like.device, like.dtype
        self.x = torch.zeros(batch, mel, frames, device=dev, dtype=torch.float32)
        self.mask2 = torch.ones(2 * batch, 1, frames, device=dev, dtype=dt)
        self.mu2 = torch.zeros(2 * batch, mel, frames, device=dev, dtype=dt)
        self.spks2 = torch.zeros(2 * batch, mel, device=dev, dtype=dt)
        self.cond2 = torch.zeros(2 * batch, mel, frames, device=dev, dtype=dt)
        self.t = torch.zeros((), device=dev, dtype=torch.float32)
        self.dt = torch.zeros((), device=dev, dtype=torch.float32)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.busy = False
        """An `OdeRun` holds these buffers (its state) until its last step."""

    def step_args(self) -> tuple[torch.Tensor, ...]:
        return self.x, self.mask2, self.mu2, self.spks2, self.cond2, self.t, self.dt


class GraphedCFM:
    """Drop-in for `ConditionalCFM.forward(z, mask, mu, spks, cond)` with bucket padding and CUDA graphs.

    One graph per bucket holds ONE Euler step (the estimator pass with CFG and the in-place update of the ODE state),
    replayed once per step with that step's t and dt copied in: the same kernels as capturing the whole loop, at a
    tenth of the capture time (the server captures every bucket before it is ready).
    `use_graphs=False` runs the same buffers and steps eagerly: the CPU test path, and a switch for debugging.
    """

    def __init__(self, cfm: torch.nn.Module, config: FlowGraphConfig | None = None, *, use_graphs: bool = True) -> None:
        self.cfm = cfm
        self.config = config or FlowGraphConfig()
        self.use_graphs = use_graphs
        self._graphs: OrderedDict[tuple[int, int], _Captured] = OrderedDict()
        self._pool = None
        self._capture_stream = None
        """This set's own capture stream, also for the warm-up before each capture. Why: cuBLAS keeps one workspace
        per (thread's handle, stream) and a captured GEMM keeps the workspace it was captured with; on torch's shared
        default capture stream another graph set (two decoders' graphs replayed at the same time) would write into
        the same one, and a new side stream per warm-up left a workspace behind for each of up to 32 pooled streams."""
        self.captures = 0
        self.capture_seconds = 0.0
        self.capture_on_first_use = True
        """A bucket `warmup` did not capture is captured when a pass first needs it. Off beside vLLM's model (its
        process): a capture puts the device's default random generator in capture mode, and the LLM's sampling from it
        meanwhile (another thread) kills the engine; such a pass runs eagerly instead (see `no_captures_on_first_use`
        in pipeline/decoder_rules.py)."""
        self.batch_buckets = batch_buckets(self.config.batch_buckets)
        """The batch sizes passes are padded to now (`set_batch_buckets`; graphs of other sizes stay captured)."""

    def set_batch_buckets(self, sizes: object) -> None:
        """Pad later passes to these batch sizes (capture their graphs with `warmup` before serving with them)."""
        self.batch_buckets = batch_buckets(sizes)

    def bucket(self, batch: int, frames: int) -> tuple[int, int]:
        return padded_batch(batch, self.batch_buckets), self._frame_bucket(frames)

    def _frame_bucket(self, frames: int) -> int:
        step = self.config.frame_bucket
        if frames <= self.config.small_frames:
            step //= 2
        return -(-frames // step) * step

    def frame_buckets(self, max_frames: int) -> list[int]:
        """Every frame bucket up to the one holding `max_frames`, smallest first."""
        out = [self._frame_bucket(1)]
        while out[-1] < max_frames:
            out.append(self._frame_bucket(out[-1] + 1))
        return out

    @torch.inference_mode()  # as every later pass: a compiled estimator then needs no second (normal-mode) graph
    def warmup(self, max_batch: int, max_frames: int, like: torch.Tensor) -> int:
        """Capture every bucket up to (max_batch, max_frames) now, so that no request waits for a capture."""
        if not self.use_graphs:
            return 0
        sizes = sorted({padded_batch(rows, self.batch_buckets) for rows in range(1, max_batch + 1)})
        mel = self.cfm.cfg.output_size
        skipped = 0
        for t in self.frame_buckets(min(max_frames, self.config.max_frames)):
            for b in sizes:
                if (b, t) in self._graphs:
                    continue
                if len(self._graphs) < self.config.max_graphs:
                    self._capture((b, t), like, mel)
                else:
                    skipped += 1
        if skipped:  # never silent: those passes run eagerly, slower, and a comparison of buckets would be skewed
            logger.warning(
                "%d flow graph buckets not captured (max_graphs %d): they run eagerly", skipped, len(self._graphs)
            )
        return len(self._graphs)

    def __call__(
        self, z: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
    ) -> torch.Tensor:
        run = self.start(z, mask, mu, spks, cond)
        while run.step():
            pass
        return run.result()

    def start(
        self, z: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
    ) -> OdeRun:
        """An ODE solve whose Euler steps the caller runs one at a time (`OdeRun.step`), so that a scheduler can
        run a short, urgent solve between two steps of a long one (each solve keeps its state in its own buffers)."""
        batch, mel, frames = mu.shape
        if frames > self.config.max_frames:
            x, *doubled = self.cfm.prepare(z, mask, mu, spks, cond)
            return OdeRun(self.cfm, x, doubled, batch, frames, padded=bool((mask == 0).any()))
        key = self.bucket(batch, frames)
        buf = None if not self.use_graphs else self._graphs.get(key)
        if self.use_graphs and buf is None and self.capture_on_first_use and len(self._graphs) < self.config.max_graphs:
            buf = self._capture(key, mu, mel)
        elif buf is not None:
            self._graphs.move_to_end(key)
        if buf is None or buf.busy:
            # Eager through fresh buffers: the CPU path, or the rare urgent solve that lands in the bucket of the
            # solve it interrupted (whose buffers hold that solve's state until it ends).
            buf = _Captured(key[0], key[1], mu, mel)  # never captured
        _fill(buf, z, mask, mu, spks, cond)
        return OdeRun(self.cfm, buf.x, list(buf.step_args()[1:5]), batch, frames, padded=True, captured=buf)

    def _capture(self, key: tuple[int, int], like: torch.Tensor, mel: int) -> _Captured:
        start = time.perf_counter()
        buf = _Captured(key[0], key[1], like, mel)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            self._capture_stream = torch.cuda.Stream()
        # Warm-up on the capture stream first (cuDNN/cuBLAS pick their algorithms and workspaces outside the capture).
        # Not on a new side stream per capture: torch hands out 32 pooled streams round robin, so a later set's
        # capture stream could then be one this set already uses.
        side = self._capture_stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.cfm.step(*buf.step_args(), padded=True)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(
            graph, pool=self._pool, stream=self._capture_stream, capture_error_mode=CAPTURE_ERROR_MODE
        ):
            self.cfm.step(*buf.step_args(), padded=True)
        buf.graph = graph
        self._graphs[key] = buf
        self.captures += 1
        self.capture_seconds += time.perf_counter() - start
        logger.debug("captured flow step graph batch=%d frames=%d", *key)
        return buf


class OdeRun:
    """One flow-matching ODE solve, stepped by the caller: `step()` runs the next Euler step (a graph replay when
    captured) and says whether more remain; `result()` gives the solution's valid rows and frames.

    On CUDA each step records an event, so `wait(lag)` lets the caller stay at most `lag` steps ahead of the GPU:
    a check made between steps then sees the GPU where the CPU thinks it is (else all ten replays would be queued
    at once and nothing could come between them).
    """

    def __init__(
        self,
        cfm: torch.nn.Module,
        x: torch.Tensor,
        doubled: list[torch.Tensor],
        batch: int,
        frames: int,
        *,
        padded: bool,
        captured: _Captured | None = None,
    ) -> None:
        self._cfm, self._x, self._doubled = cfm, x, doubled
        self._batch, self._frames, self._padded = batch, frames, padded
        self._captured = captured
        self._steps = cfm.steps(x.device)
        self._next = 0
        self._events: list = []
        if captured is not None:
            captured.busy = True

    @property
    def remaining(self) -> int:
        return len(self._steps) - self._next

    def step(self) -> bool:
        """Run the next Euler step; True while more remain (so `while run.step(): ...` never runs past the last)."""
        if self._next >= len(self._steps):
            return False
        t, dt = self._steps[self._next]
        self._next += 1
        buf = self._captured
        with torch.inference_mode():
            if buf is not None and buf.graph is not None:
                buf.t.copy_(t)
                buf.dt.copy_(dt)
                buf.graph.replay()
            else:
                self._cfm.step(self._x, *self._doubled, t, dt, padded=self._padded)
            if self._x.is_cuda:
                event = torch.cuda.Event()
                event.record()
                self._events.append(event)
        return self._next < len(self._steps)

    def wait(self, lag: int = 1) -> None:
        """Block until the GPU has finished all but the last `lag` steps queued (no-op on the CPU)."""
        if len(self._events) > lag:
            self._events[-1 - lag].synchronize()

    def result(self) -> torch.Tensor:
        """The solution (valid rows and frames); frees the buffers for the next solve of their bucket."""
        if self.remaining:
            msg = f"{self.remaining} ODE steps still to run"
            raise RuntimeError(msg)
        with torch.inference_mode():
            # Cloned: a later replay of any bucket (shared pool, shared buffers) may overwrite this memory.
            out = self._x[: self._batch, :, : self._frames].clone()
        self.release()
        return out

    def release(self) -> None:
        """Give the buffers back (also for a solve abandoned on an error)."""
        if self._captured is not None:
            self._captured.busy = False


def _fill(
    buf: _Captured, z: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
) -> None:
    """Real rows first in each half of the doubled (CFG) batch; padding rows stay all-valid zeros (no NaN from an
    empty softmax row), padding frames carry mask 0; the unconditional half keeps mu, spks and cond at zero."""
    b, _, t = mu.shape
    half = buf.x.shape[0]
    buf.x.zero_()
    buf.x[:b, :, :t].copy_(z)
    for static, value in ((buf.mu2, mu), (buf.cond2, cond)):
        static.zero_()
        static[:b, :, :t].copy_(value)
    buf.spks2.zero_()
    buf.spks2[:b].copy_(spks)
    buf.mask2.fill_(1.0)
    for rows in (slice(0, b), slice(half, half + b)):
        buf.mask2[rows].zero_()
        buf.mask2[rows, :, :t].copy_(mask)
