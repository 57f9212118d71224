"""First-chunk lane: a reply's first chunks decoded beside the long passes, not after them.

Why: a decoder pass cannot be interrupted on the GPU. Under a burst of new streams the scheduler's thread runs
passes of many rows of 100 context + 52-156 new tokens (0.2-0.6 s on an H200), and a reply whose first 10 tokens
arrive meanwhile waited for that pass to end, then for its own: on an H200 at 16 streams the first audio came
~0.3 s after its tokens (bench/results). Interrupting the long pass between ODE steps (`preempt`) serialised the
two and split the first chunks into many one-row passes, which cost more than it saved.

Here the first chunks run at the same time as the long pass:
- on a thread of their own, so the host waits for their pass, not for the long one;
- on a high-priority CUDA stream of their own, so their kernels take the SMs first whenever both have work;
- through a CUDA-graph set with its own memory pool (graphs of one pool must never replay at the same time).

Ownership: the scheduler's thread decides what the lane decodes (it takes the tokens off the stream), marks those
streams `lent` and leaves them alone until the lane reports back through the scheduler's queue. The lane prepares,
decodes, commits and sends the audio itself, so a first chunk never waits for the scheduler's thread. Every device
tensor a lent stream gets is made on the lane's stream, and the lane's pass ends with a copy to the host (the
stream is idle again) before the stream goes back: the long passes read that state only after it is complete.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glm4voice_api.models.speech_decoder.decoder import DecodePass
    from glm4voice_api.pipeline.scheduled_stream import ScheduledStream

logger = logging.getLogger(__name__)


@dataclass
class LaneJob:
    """Chunks handed to the lane: per stream, its tokens (taken off the stream) and whether they are its last."""

    rows: list[tuple[ScheduledStream, list[int], bool]]
    started: float = field(default_factory=time.monotonic)


class FirstChunkLane:
    """Runs the jobs the scheduler gives it, one at a time, on its own thread (and CUDA stream on a GPU)."""

    def __init__(
        self, run_rows: Any, report: Any, device: Any, runner: Any, *, max_batch: int, max_tokens: int
    ) -> None:
        self._run_rows = run_rows
        """`DecoderScheduler._run_lane_job(job, runner)`: prepare, decode through `runner`, commit and send."""
        self._report = report
        """Called with each job once it is done (whatever happened): hands its streams back to the scheduler."""
        self.device = device
        self.runner = runner
        """The lane's `GraphedCFM` (its own graphs and pool), or None: the flow's own runner (CPU: eager)."""
        self.max_batch = max_batch
        self.max_tokens = max_tokens
        """Chunks of a stream's first `max_tokens` tokens go through the lane (rows of at most that many tokens)."""
        self.own_stream = False
        """Its kernels on a high-priority CUDA stream of its own. Off: on an H200 that crashed (illegal memory access)
        whenever the speech tokenizer ran on the default stream beside it (bench/check_lane_cuda.py: fine without
        the tokenizer); on the default stream its kernels queue behind the long pass's one queued ODE step."""
        self.busy = False
        """A job is in the lane: set when the scheduler submits one, cleared when it reads the lane's report."""
        self.passes = 0
        self.chunks = 0
        self.busy_seconds = 0.0
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="decoder-first-chunks", daemon=True)
        self._thread.start()

    def submit(self, job: LaneJob) -> None:
        self.busy = True
        self._jobs.put(job)

    def stop(self, timeout: float = 30.0) -> None:
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def eligible(self, decoded: int, row_tokens: int) -> bool:
        """Whether a chunk goes through the lane: one of the stream's first tokens, in a row the lane's graphs hold."""
        return decoded < self.max_tokens and row_tokens <= self.max_tokens

    def _serve(self) -> None:
        on_stream = False
        while (job := self._jobs.get()) is not None:
            if not on_stream and self.own_stream:  # read at the first job: a check may switch it off after start
                high_priority_stream(self.device)
            on_stream = True
            start = time.perf_counter()
            try:
                self._run_rows(job, self.runner)
            except BaseException:  # the scheduler must hear back, or these streams would never be served again
                logger.exception("first-chunk lane: a job failed outside its streams' guards")
            finally:
                self.passes += 1
                self.chunks += len(job.rows)
                self.busy_seconds += time.perf_counter() - start
                self._report(job)


class LaneScheduling:
    """The scheduler's side of the lane (a mixin of `DecoderScheduler`, on its worker thread unless said otherwise)."""

    lane: FirstChunkLane | None
    policy: Any
    decoder: Any
    _in_pass: set[int]

    def _lane_tokens(self) -> int:
        return self.lane.max_tokens if self.lane is not None else 0

    def _for_lane(self, s: ScheduledStream, size: int) -> bool:
        """Whether this chunk is the lane's (a stream's first tokens, in a row short enough for the lane's graphs)."""
        if self.lane is None:
            return False
        voice = len(s._voice.prompt_tokens) if s._voice is not None else 0
        return self.lane.eligible(s.decoded, voice + self._row_len(s, size))

    def _dispatch_lane(self, streams: set[ScheduledStream]) -> None:
        """Hand the due first chunks, most urgent first, to the lane if it is free."""
        lane = self.lane
        if lane is None or lane.busy:
            return
        now = time.monotonic()
        pass_s = self.pass_seconds()
        due = [
            (s, n)
            for s in streams
            if not s.lent
            and id(s) not in self._in_pass
            and s.decoded < lane.max_tokens
            and (n := self._size(s, now, pass_s)) is not None
            and self._for_lane(s, n)
        ]
        if not due:
            return
        due.sort(key=lambda e: self.policy.urgency(e[0].view(now)))
        job = LaneJob([])
        for s, size in due[: lane.max_batch]:
            tokens, final = self._take(s, size)
            s.lent = True
            if s.first_sent is None:
                s.first_sent = now
            job.rows.append((s, tokens, final))
        lane.submit(job)

    def _run_lane_job(self, job: LaneJob, runner: Any) -> None:
        """On the lane's thread: the job's chunks as one pass through the lane's graphs, audio sent from here."""
        rows = self._requests(job.rows, None)
        if not rows:
            return
        try:
            results = self.decoder.decode_batch([r for _, r in rows], runner=runner)
        except Exception as exc:  # these streams fail, the others go on
            logger.exception("first-chunk lane: decoder pass failed (%d streams)", len(rows))
            for s, _ in rows:
                self._fail(s, exc, None)
            return
        self._emit(rows, results, None)

    def _lane_done(self, job: LaneJob, streams: set[ScheduledStream]) -> None:
        """The lane hands the job's streams back (worker thread)."""
        assert self.lane is not None
        self.lane.busy = False
        for s, _, _ in job.rows:
            s.lent = False
            if s.finished:
                streams.discard(s)
            if s in self._closing:
                self._closing.discard(s)
                self._close(s, streams)

    def _lane_between_steps(self, streams: set, running: DecodePass) -> None:
        """Between two ODE steps of a long pass: take new tokens and lane reports, give the lane its next job."""
        running.wait()  # at most one step queued ahead: the GPU never idles, and this thread looks every step
        for item in self._drain(0.0):
            if item is not None and item[0] in ("tokens", "lane_done"):
                self._handle(item, streams)
            else:
                self._deferred.append(item)  # a close or stop waits for the running pass (it may hold the stream)
        self._dispatch_lane(streams)


def high_priority_stream(device: Any) -> None:
    """Give this thread a high-priority CUDA stream of its own (no-op on CPU).

    The lane always runs on one: its kernels go first whenever the long passes (on the default stream, or on a
    stream of their own) have work too. The scheduler's thread takes one only with the LLM in the same process
    (engine `process: inproc`), where kernels on separate streams of one context overlap and the priority lets a
    decoder pass start between the LLM's kernels. With vLLM in its own process one H100 run of that (the speech
    tokenizer on the default stream beside it) hit an illegal memory access that runs on the default stream never
    showed; not understood, so the long passes stay on the default stream there.
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_stream(torch.cuda.Stream(dev, priority=-1))
