"""The machinery shared by the bucketed CUDA-graph runners of a decoder pass's eager parts (`GraphedHiFT`,
`GraphedFlowFront`): static buffers in a shared arena, one memory pool, an own capture stream with a warm-up run
before each capture, `max_graphs` and the capture counters. A runner says what a bucket's buffers are (`_sizes`,
`_new_arena`, `_views`), how a valid pass is put in them for the warm-up (`_prime`) and what runs on them (`_run`).

Memory: every bucket's static buffers are views of one shared arena (a float and an int64 tensor, the largest
bucket's size; the runner's `reserve` allocates it), since buckets run one at a time on one stream: inputs are
written just before a replay and outputs copied out just after. A bucket larger than any arena gets its own (the
older graphs keep theirs). Graphs share one memory pool (their intermediates are dead after each replay); beyond
`max_graphs` a bucket runs eagerly through the same buffers: a graph is never destroyed while others live (see
`flow_graphs.py`: destroying one frees the cuBLAS workspace of its capture stream, pytorch/pytorch#193402).
Not thread safe: one decoder thread calls a runner (the shared arena).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterable
from typing import Any, Generic, TypeVar

import torch

__all__ = ["CAPTURE_ERROR_MODE", "BucketGraphs", "StaticBucket"]

logger = logging.getLogger(__name__)

Arena = tuple[torch.Tensor, torch.Tensor]

CAPTURE_ERROR_MODE = "thread_local"
"""How strict a capture of ours is about other threads: only this thread's unsafe CUDA calls fail it. Under torch's
default ("global"), a call that another thread of the process makes meanwhile (e.g. vLLM's model step, with the
decoder hosted in its process or the engine in ours, or the speech tokenizer's pass) fails that call or the capture;
this thread, as every thread of ours that captures, works on streams of its own."""


_OUT_OF_MEMORY = ("out of memory", "ALLOC_FAILED", "CUBLAS_STATUS_NOT_INITIALIZED")
"""How running out of device memory reads in torch's and the CUDA libraries' errors (cuBLAS reports a handle it
could not allocate as not initialised)."""


def _out_of_memory(exc: BaseException) -> bool:
    """Whether `exc`, or what it was raised from or while handling (a capture's end fails after an allocation inside
    it did), is the device running out of memory."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, torch.cuda.OutOfMemoryError) or any(m in str(seen) for m in _OUT_OF_MEMORY):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class StaticBucket:
    """One bucket's static buffers (views of the shared arenas) and its graph."""

    graph: torch.cuda.CUDAGraph | None = None


B = TypeVar("B", bound=StaticBucket)


class BucketGraphs(Generic[B]):
    """A bucketed graph runner's common part: `self.config` has `max_graphs`; `label` names it in `log`'s lines,
    `key_format` a bucket's key."""

    label = "bucket"
    key_format = "%s"
    log = logger

    def __init__(self, config: Any, use_graphs: bool) -> None:
        self.config = config
        self.use_graphs = use_graphs
        self._graphs: dict[Any, B] = {}
        self._arenas: list[Arena] = []
        self._pool = None
        self._capture_stream = None
        """This set's own capture stream, also for the warm-up before each capture (as `GraphedCFM`'s: a captured
        GEMM keeps the cuBLAS workspace of the stream it was captured on)."""
        self.captures = 0
        self.capture_seconds = 0.0
        self.capture_on_first_use = True
        """As `GraphedCFM.capture_on_first_use`: off beside vLLM's model, where a bucket `warmup` left out runs
        eagerly through its buffers."""
        self._failed_graphs: list[torch.cuda.CUDAGraph] = []

    @property
    def graphs(self) -> int:
        return len(self._graphs)

    # What a runner defines.

    def _sizes(self, key: Any) -> tuple[int, int]:
        """Floats and ints a bucket's buffers take in the arenas."""
        raise NotImplementedError

    def _new_arena(self, floats: int, ints: int) -> Arena:
        raise NotImplementedError

    def _views(self, key: Any, arena: Arena) -> B:
        raise NotImplementedError

    def _prime(self, buf: B) -> None:
        """A valid pass in the buffers, for the warm-up run before a capture."""
        raise NotImplementedError

    def _run(self, buf: B) -> None:
        """The pass on the buffers (captured, or run eagerly)."""
        raise NotImplementedError

    def _device(self, buf: B) -> torch.device:
        raise NotImplementedError

    # The shared part.

    def _has_arena(self, floats: int, ints: int) -> bool:
        return any(a[0].numel() >= floats and a[1].numel() >= ints for a in self._arenas)

    def _buffers(self, key: Hashable) -> B:
        floats, ints = self._sizes(key)
        arena = next((a for a in self._arenas if a[0].numel() >= floats and a[1].numel() >= ints), None)
        if arena is None:  # a bucket larger than `warmup` reserved: its own arena (the older graphs keep theirs)
            arena = self._reserve(key)
        return self._views(key, arena)

    def _reserve(self, key: Hashable) -> Arena:
        arena = self._new_arena(*self._sizes(key))
        self._arenas.append(arena)
        return arena

    def _bucket_for(self, key: Hashable) -> B:
        """The bucket's captured graph, captured now while under `max_graphs`, else its buffers to run eagerly."""
        buf = self._graphs.get(key) if self.use_graphs else None
        if buf is None and self.capture_on_first_use and self._may_capture():
            buf = self._try_capture(key)
        if buf is None:
            buf = self._buffers(key)  # eager through the same static buffers (no graph, or beyond max_graphs)
        return buf

    def _replay(self, buf: B) -> None:
        if buf.graph is not None:
            buf.graph.replay()
        else:
            self._run(buf)

    def _capture_all(self, keys: Iterable[Hashable]) -> int:
        """Capture these buckets (up to `max_graphs`); the number of graphs."""
        skipped = 0
        for key in keys:
            if key in self._graphs:
                continue
            if not self._may_capture() or self._try_capture(key) is None:
                skipped += 1
        if skipped:
            why = "out of device memory" if self.capture_failed else f"max_graphs {self.config.max_graphs}"
            self.log.warning("%d %s graph buckets not captured (%s): they run eagerly", skipped, self.label, why)
        return len(self._graphs)

    capture_failed: str | None = None
    """Why a capture failed (the device ran out of memory): no further captures; those made keep serving."""

    def _may_capture(self) -> bool:
        return self.use_graphs and self.capture_failed is None and len(self._graphs) < self.config.max_graphs

    def _try_capture(self, key: Hashable) -> B | None:
        """`_capture`, or None once the device cannot hold another graph: an option that runs the GPU out of memory
        beside vLLM (HiFT's largest buckets did, H100 2026-12-05) degrades to eager passes instead of failing the
        server's start or a stream's pass."""
        try:
            return self._capture(key)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError, or cuBLAS/cuDNN failing to allocate
            if not _out_of_memory(exc):
                raise
            self.capture_failed = f"{type(exc).__name__}: {str(exc)[:200]}"
            self.log.error(
                f"capturing %s graph {self.key_format} ran the device out of memory; %d graphs kept, the rest run "
                "eagerly: %s",
                self.label,
                *key,
                len(self._graphs),
                self.capture_failed,
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return None

    def _capture(self, key: Hashable) -> B:
        start = time.perf_counter()
        buf = self._buffers(key)
        self._prime(buf)
        with torch.cuda.device(self._device(buf)):  # the pool and stream: the model's GPU
            buf.graph = self._captured(buf)
        self._graphs[key] = buf
        self.captures += 1
        self.capture_seconds += time.perf_counter() - start
        self.log.debug(f"captured %s graph {self.key_format}", self.label, *key)
        return buf

    def _captured(self, buf: B) -> torch.cuda.CUDAGraph:
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
            self._capture_stream = torch.cuda.Stream()
        side = self._capture_stream
        # Warm-up on the capture stream first (what each runner's warm-up prepares: its `_prime`): cuDNN picks its
        # algorithms and cuBLAS its workspace outside the capture.
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._run(buf)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        current = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(graph, pool=self._pool, stream=side, capture_error_mode=CAPTURE_ERROR_MODE):
                self._run(buf)
        except BaseException:
            # A failed capture's graph is kept, never destroyed: destroying a graph frees the cuBLAS workspace of its
            # capture stream, which every graph of this set shares (see the module's docstring). And the stream is
            # set back: when the capture's end fails too, `torch.cuda.graph` leaves the side stream current.
            self._failed_graphs.append(graph)
            torch.cuda.set_stream(current)
            raise
        return graph
