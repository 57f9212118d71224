"""DecoderScheduler: one thread owns the speech decoder and decodes the due chunks of many streams in batches.

Why one owner: the flow + HiFT passes are the scarce resource (per-pass launch overhead dominates at batch 1 on a
GPU), so chunks of many streams share one `decode_batch` pass. What is due, and how many tokens a chunk takes, is
the chunk policy's decision (`chunk_policy.py`), made from each stream's buffered audio: the scheduler re-decides
before every pass, and also wakes up by itself when a waiting stream's buffer is about to run out (no new tokens
needed for that). Order within a pass: most urgent first (least audio buffered; a first chunk counts as nearly
dry), rows of similar length together (a padded pass costs as much as its longest row), and the rows a CUDA-graph
bucket would pad anyway are filled with streams that have enough tokens waiting (free work that fattens buffers).

Streams' decoder state is touched only by the worker thread; the event loop pushes tokens and reads audio through
an asyncio queue per stream. A failing chunk fails only its own stream; the thread keeps serving the others.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from glm4voice_api.models.speech_decoder.chunks import ChunkRequest, ChunkResult, Voice
from glm4voice_api.models.speech_decoder.decoder import DecodePass, SpeechDecoder
from glm4voice_api.models.speech_decoder.stream import MIN_CHUNK_TOKENS, DecoderStreamConfig
from glm4voice_api.pipeline.chunk_policy import AdaptiveChunkPolicy, ChunkPolicy
from glm4voice_api.pipeline.deadline_hold import DeadlineHold
from glm4voice_api.pipeline.green_split import StreamSlot
from glm4voice_api.pipeline.llm_pause import LLMPause
from glm4voice_api.pipeline.pass_cost import PASS_LOG_SIZE, PassCost, PassRecord
from glm4voice_api.pipeline.scheduled_stream import END, ScheduledStream

logger = logging.getLogger(__name__)

_MIN_WAIT_S = 0.002
# A chunk emitted with less audio than this left to play, once a stream is past its first seconds, was nearly late:
# capacity control stops admitting more streams on these before listeners hear gaps.
NEAR_MISS_S = 0.1
_SETTLED_S = 2.0


class DecoderStoppedError(RuntimeError):
    """The scheduler's thread has stopped: its streams and every new one fail at once (liveness reports it)."""


class DecoderScheduler:
    def __init__(
        self,
        decoder: SpeechDecoder,
        stream_config: DecoderStreamConfig | None = None,
        *,
        policy: ChunkPolicy | None = None,
        max_batch: int = 16,
        own_stream: bool = False,
        max_pass_s: float | None = None,
        preempt: bool = False,
        hold_lead_s: float | None = None,
        llm_pause: LLMPause | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.decoder = decoder
        self.stream_config = stream_config or DecoderStreamConfig()
        self.policy: ChunkPolicy = policy or AdaptiveChunkPolicy()
        self.max_batch = max_batch
        self.own_stream = own_stream
        """Run on a high-priority CUDA stream of its own (with the LLM in this process, see `_own_cuda_stream`)."""
        self.stream_slot = StreamSlot()  # or a green context's stream (`green_split.py`), taken up between passes
        self.max_pass_s = max_pass_s
        """Expected length a pass may grow to by adding rows (None: max_batch only): a chunk due while a pass runs
        waits for it, so a long pass of far-ahead streams would delay a first chunk or a stream about to run dry."""
        self.preempt = preempt
        """Short passes (a first chunk, a buffer about to run dry) between a long pass's ODE steps. Off: worse on an
        H200 (2026-12-04: 16 streams 1409 / 1597 ms playable p50 / p99 with it, 902 / 1078 without)."""
        self.preemptions = 0
        self.llm_pause = llm_pause or LLMPause(None, 0)
        """A first chunk's pass holds the LLM's next step while few streams are open (`llm_pause.py`)."""
        self.hold = None if hold_lead_s is None else DeadlineHold(hold_lead_s, margin_s=NEAR_MISS_S)
        """Deadline batching (`hold_lead_s` None: off, every due chunk is decoded at once): a due chunk of a live
        stream with more than `hold_lead_s` plus the expected pass wait buffered is held; it goes with the next pass
        that some stream's need starts (a first chunk, a final flush, a buffer about to run low), or its own once it
        runs low (`deadline_hold.py`)."""
        self.held_passes = 0  # passes that took at least one held chunk (how much deadline batching merged)
        self._held_rows = 0  # held rows in the batch `_pick` chose last
        self.pass_log: deque[PassRecord] = deque(maxlen=PASS_LOG_SIZE)
        """The latest passes, for benchmarks (bench/gpu_server.py's /bench/passes) and cost models."""
        self.clock = clock  # time.monotonic; a simulated clock in bench/sim_schedule.py
        self._deferred: list = []
        """Queue items taken between steps that must wait for the running pass (a close, the stop marker)."""
        self._step_mark = 0.0
        """When the running pass's previous ODE step ended (between-step timing)."""
        self.cost = PassCost()
        self.sample_rate = decoder.sample_rate
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._open = 0
        self._lock = threading.Lock()
        self._pass_ewma = 0.05
        self.on_underrun: Callable[[], None] = lambda: None
        """Called (on the worker thread) when a stream's listener ran out of audio before its next chunk."""
        self.batches = 0
        self.chunks = 0
        self.underruns = 0
        self.settled_underruns = 0
        self.near_misses = 0
        self.failures = 0
        self.busy_seconds = 0.0
        """Wall time inside `decode_batch` (results come back on the CPU, so that includes the GPU work)."""
        # First audio, split (sums over `first_chunks` streams): tokens arriving, waiting for a pass, the pass.
        self.first_chunks = 0
        self.first_supply_s = 0.0
        self.first_wait_s = 0.0
        self.first_pass_s = 0.0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="decoder-scheduler", daemon=True)
        self._thread.start()

    _stopped: BaseException | None = None
    """What stopped the thread (set before its streams are told, so `alive` is false from then on)."""

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._stopped is None

    async def close(self) -> None:
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)

    def open_stream(self, voice: Voice | None = None, *, live: bool = False) -> ScheduledStream:
        """A decoder session; `live`: its audio is played as it comes (see `ScheduledStream.live`)."""
        if self._thread is not None and not self.alive:
            raise DecoderStoppedError("the speech decoder has stopped")  # fail now, not after the first-audio limit
        with self._lock:
            self._open += 1
        return ScheduledStream(self, voice, live=live)

    def active_streams(self) -> int:
        """Sessions opened and not yet freed (leak checks, metrics)."""
        with self._lock:
            return self._open

    def set_underrun_callback(self, callback: Callable[[], None]) -> None:
        self.on_underrun = callback

    def pass_seconds(self) -> float:
        """Expected wait for a pass started now: one may be running, then ours (EWMA of measured passes)."""
        return 2.0 * self._pass_ewma

    def _put(self, item: object) -> None:
        self._queue.put(item)

    # -- worker thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        streams: set[ScheduledStream] = set()
        try:
            self._serve(streams)
        except BaseException as exc:
            # A fault outside the per-stream guards: every stream waiting here is told now (their requests end with
            # a retryable error) rather than waiting out the first-audio limit; `alive` turns false for liveness.
            logger.critical("the decoder scheduler's thread stopped", exc_info=exc)
            self._stopped = exc
            error = DecoderStoppedError(f"the speech decoder has stopped: {exc!r}")
            queued = {item[1] for item in self._drain(0.0) if item is not None}
            for s in streams | queued:
                s._send(error)

    def _serve(self, streams: set[ScheduledStream]) -> None:
        if self.own_stream:
            _own_cuda_stream(self.decoder.device)
        stopping = False
        decoded = False
        while True:
            # No sleep right after a pass: tokens taken in between its ODE steps may have made chunks due that no
            # queue item will announce again (a reply's last tokens: it would then wait forever).
            timeout = 0.0 if self._deferred or decoded else self._wait_time(streams, stopping)
            items, self._deferred = [*self._deferred, *self._drain(timeout)], []
            for item in items:
                if item is None:
                    stopping = True
                else:
                    self._handle(item, streams)
            batch = self._pick(streams)
            decoded = bool(batch)
            if batch:
                self.stream_slot.take_up()
                self._decode(batch, streams)
            elif stopping:
                return

    def _handle(self, item: tuple, streams: set[ScheduledStream]) -> None:
        if item[0] == "tokens":
            self._take_tokens(item[1], item[2], item[3], item[4], streams)
        else:
            self._close(item[1], streams)

    def _wait_time(self, streams: set[ScheduledStream], stopping: bool) -> float | None:
        """How long the worker may sleep: until a waiting stream's buffer nears its end (None: until new work)."""
        if stopping:
            return 0.0
        now = self.clock()
        pass_s = self.pass_seconds()
        waits = [w for s in streams if (w := self.policy.wake_in(s.view(now), pass_s)) is not None]
        if self.hold is not None:  # a held chunk must go once its stream's buffer runs low
            waits += [self.hold.slack(s, now, pass_s) for s in streams if self._size(s, now, pass_s) is not None]
        return max(_MIN_WAIT_S, min(waits)) if waits else None

    def _drain(self, timeout: float | None) -> list:
        items = []
        try:
            items.append(self._queue.get(timeout=timeout) if timeout != 0.0 else self._queue.get_nowait())
        except queue.Empty:
            pass
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _take_tokens(self, s: ScheduledStream, tokens: list[int], final: bool, at: float, streams: set) -> None:
        if s.closed or s.finished:
            return
        s._tokens.extend(tokens)
        s.received += len(tokens)
        s._final = s._final or final
        streams.add(s)
        if s.first_ready is None and not s.decoded and self._size(s, at, self.pass_seconds()) is not None:
            s.first_ready = at  # when the push arrived, not when this thread got to it (that is the wait)

    def _close(self, s: ScheduledStream, streams: set) -> None:
        streams.discard(s)
        s._free()
        s._send(END)
        with self._lock:
            self._open -= 1

    def _size(self, s: ScheduledStream, now: float, pass_s: float) -> int | None:
        """Tokens due now (-1: the final flush of everything left), or None."""
        if s.finished:
            return None
        if s._final:
            # The rest in one final chunk, unless that is longer than the policy's longest: one long row would make
            # its whole pass long, and every other stream waits for the pass (the tail comes in later passes).
            longest = getattr(self.policy, "max_chunk", None)
            return longest if longest is not None and len(s._tokens) > longest else -1
        return self.policy.chunk_size(s.view(now), pass_s)

    def _row_len(self, s: ScheduledStream, size: int) -> int:
        context = self.stream_config.max_prompt_tokens
        history = s.decoded if context is None else min(s.decoded, context)
        return history + (len(s._tokens) if size < 0 else size)

    def _pick(
        self, streams: set[ScheduledStream], first_from: set[ScheduledStream] | None = None
    ) -> list[tuple[ScheduledStream, int]]:
        """The most urgent due chunk (of `first_from`, if given) plus others of similar length, then free riders up
        to the graph bucket; rows beyond the first are added only while the pass's expected length stays within
        `max_pass_s`."""
        now, self.cost.buckets = self.clock(), getattr(self.decoder, "batch_buckets", None)  # the graphs' padding
        pass_s = self.pass_seconds()
        due = [(s, n) for s in streams if (n := self._size(s, now, pass_s)) is not None]
        due.sort(key=lambda e: (first_from is not None and e[0] not in first_from, self.policy.urgency(e[0].view(now))))
        if not due or (first_from is not None and due[0][0] not in first_from):
            return []
        company = getattr(self.policy, "first_company_s", None)  # FixedSchedule's: who may join a first chunk's pass
        if company is not None and not due[0][0].view(now).started:
            due = [e for e in due if not (v := e[0].view(now)).started or v.buffered_s < company]
        hold = self.hold if first_from is None else None
        if hold is not None:
            needed = [e for e in due if hold.needed(*e, now, pass_s)]
            if not needed:
                return []  # every due chunk can wait: it goes with the next pass some stream needs
            # The most urgent needed chunk leads the pass (it sets the similar-length bound); held ones ride along.
            leads = {id(s) for s, _ in needed}
            due = needed + [e for e in due if id(e[0]) not in leads]
        limit = 1.25 * self._row_len(*due[0]) + 16
        batch = [due[0]]
        longest = self._row_len(*due[0])

        def fits(row_len: int) -> bool:
            if self.max_pass_s is None:
                return True
            cost = self.cost.estimate(self.cost.padded_units(len(batch) + 1, max(longest, row_len)))
            return cost is None or cost <= self.max_pass_s

        budget: float | None = None  # how long the pass may grow to with held rows (set once the needed are in)
        for entry in due[1:]:
            if len(batch) >= self.max_batch:
                break
            row_len = self._row_len(*entry)
            if not (row_len <= limit and fits(row_len)):
                continue
            if hold is not None and id(entry[0]) not in leads:
                budget = hold.budget(self.cost, batch, longest, now) if budget is None else budget
                if not hold.fits(self.cost, len(batch), longest, row_len, budget):
                    continue
            batch.append(entry)
            longest = max(longest, row_len)
        self._held_rows = 0
        if hold is not None:
            self._held_rows = sum(id(s) not in leads for s, _ in batch)
            self.held_passes += self._held_rows > 0
        # A CUDA-graph pass is padded to its batch bucket: those rows cost nothing, so give them to streams
        # that have a steady-size chunk waiting (they get ahead, and their next chunk can be longer).
        room = min(self.max_batch, self.cost.padded_rows(len(batch))) - len(batch)
        if room > 0:
            chosen = {id(s) for s, _ in batch}
            riders = [s for s in streams if id(s) not in chosen and not s.finished and not s._final]
            riders.sort(key=lambda s: self.policy.urgency(s.view(now)))
            for s in riders:
                if room == 0:
                    break
                size = self.policy.rider_size(s.view(now))
                if size is None:
                    continue
                size = min(size, longest - self._row_len(s, 0))  # a rider never lengthens the pass
                if size >= MIN_CHUNK_TOKENS:
                    batch.append((s, size))
                    room -= 1
        return batch

    @staticmethod
    def _take(s: ScheduledStream, size: int) -> tuple[list[int], bool]:
        """The chunk's tokens off the stream (worker thread only: it appends to `_tokens`) and whether it is final."""
        if size < 0:
            tokens, s._tokens = s._tokens, []
            return tokens, True
        tokens, s._tokens = s._tokens[:size], s._tokens[size:]
        return tokens, False

    @staticmethod
    def _request(s: ScheduledStream, tokens: list[int], final: bool) -> ChunkRequest | None:
        stream = s._decoder_stream()
        return stream.prepare(tokens, final=True) if final else stream.prepare(tokens, size=len(tokens))

    def _requests(
        self, chunks: list[tuple[ScheduledStream, list[int], bool]], streams: set
    ) -> list[tuple[ScheduledStream, ChunkRequest]]:
        rows: list[tuple[ScheduledStream, ChunkRequest]] = []
        for s, tokens, final in chunks:
            try:
                request = self._request(s, tokens, final)
            except Exception as exc:  # noqa: BLE001 - this stream fails, the others go on
                self._fail(s, exc, streams)
                continue
            if request is None:  # a final flush with nothing ever decoded
                self._finish(s, streams)
            else:
                rows.append((s, request))
        return rows

    # -- passes ---------------------------------------------------------------------------------------------

    def _decode(self, batch: list[tuple[ScheduledStream, int]], streams: set, *, nested: bool = False) -> None:
        now = self.clock()
        firsts, held, self._held_rows = sum(s.first_emit is None for s, _ in batch), self._held_rows, 0
        for s, _ in batch:
            if s.first_sent is None:
                s.first_sent = now
        rows = self._requests([(s, *self._take(s, size)) for s, size in batch], streams)
        if not rows:
            return
        longest = max(len(r.prompt_tokens) + len(r.tokens) for _, r in rows)
        start = self.clock()
        inner = 0.0  # time spent in passes run between this one's steps (not this pass's cost)
        decode_pass = None
        try:
            with self.llm_pause.around(firsts, self._open):
                decode_pass = self.decoder.begin_batch([r for _, r in rows])
                if not nested:
                    self._step_mark = self.clock()
                while decode_pass.step():
                    if self.preempt and not nested:
                        inner += self._between_steps(streams, decode_pass, rows, longest)
                results = decode_pass.finish()
        except Exception as exc:
            if decode_pass is not None:
                decode_pass.abort()
            logger.exception("decoder pass failed (%d streams)", len(rows))
            for s, _ in rows:
                self._fail(s, exc, streams)
            return
        finally:
            elapsed = self.clock() - start - inner
            self.busy_seconds += elapsed
            self._pass_ewma = 0.8 * self._pass_ewma + 0.2 * elapsed
            self.cost.observe(self.cost.padded_units(len(rows), longest), elapsed)
        self.batches += 1
        self.chunks += len(rows)
        new = sum(len(r.tokens) for _, r in rows)
        self.pass_log.append(PassRecord(start, round(elapsed, 6), len(rows), longest, new, firsts, held, nested))
        self._emit(rows, results, streams)

    def _emit(self, rows: list[tuple[ScheduledStream, ChunkRequest]], results: list[ChunkResult], streams: set) -> None:
        """Commit each row's result to its stream and send its audio."""
        now = self.clock()
        for (s, request), result in zip(rows, results, strict=True):
            try:
                samples = s._decoder_stream().commit(result)
            except Exception as exc:  # noqa: BLE001
                self._fail(s, exc, streams)
                continue
            s.decoded += len(request.tokens)
            if len(samples):
                if s.first_emit is None:
                    s.first_emit = now
                    self._count_first(s, now)
                else:
                    self._check_timing(s, s.buffered_seconds(now))
                s.emitted_samples += len(samples)
                s._send(samples)
            if request.final:
                self._finish(s, streams)

    def _count_first(self, s: ScheduledStream, now: float) -> None:
        if s.first_ready is None or s.first_sent is None:
            return
        with self._lock:
            self.first_chunks += 1
            self.first_supply_s += s.first_ready - s.opened
            self.first_wait_s += max(0.0, s.first_sent - s.first_ready)
            self.first_pass_s += now - max(s.first_sent, s.first_ready)

    def _between_steps(self, streams: set, running: DecodePass, rows: list, longest: int) -> float:
        """Between two ODE steps of `running`: take new tokens, and run a short pass now for streams that cannot
        wait for `running` to end. Returns the seconds spent in that pass (0 if none ran)."""
        running.wait()  # the GPU is now at most one step behind: times are real
        mark = self.clock()
        step_s, self._step_mark = mark - self._step_mark, mark
        for item in self._drain(0.0):
            if item is not None and item[0] == "tokens":
                self._handle(item, streams)
            else:
                self._deferred.append(item)  # a close or stop waits for the running pass (it may hold the stream)
        busy = {id(s) for s, _ in rows} | {id(i[1]) for i in self._deferred if i is not None}
        now = self.clock()
        left = running.remaining_steps * step_s + self._pass_ewma
        urgent = {
            s
            for s in streams
            if id(s) not in busy
            and (s.first_emit is None or s.buffered_seconds(now) < left)
            and self._size(s, now, self.pass_seconds()) is not None
        }
        if not urgent:
            return 0.0
        batch = self._pick({s for s in streams if id(s) not in busy}, first_from=urgent)
        # Only a pass much shorter than the rest of the running one is worth the interruption.
        if not batch or max(self._row_len(s, n) for s, n in batch) > longest // 2:
            return 0.0
        self.preemptions += 1
        start = self.clock()
        self._decode(batch, streams, nested=True)
        spent = self.clock() - start
        self._step_mark += spent
        return spent

    def _check_timing(self, s: ScheduledStream, left: float) -> None:
        """Count a chunk that came after the listener ran dry (underrun) or nearly so; capacity control reads the
        counts of settled streams only (past their first 2 s: a burst of new streams makes some second chunks late
        at loads the server keeps real time; counting them cut the limit to 15 at 16 streams on an H200 and queued
        the newcomers for seconds, bench/results/gpu_suite_h200_2026-12-04_settled_0.5s.json). Counting only early
        chunks over 0.25 s late, with a 20% cut, was no better: at 2x overload (32 sessions) the limit held ~22-33,
        the queued newcomers then started one by one, the decoder met 5.5 streams a pass instead of 15.5 (60% more
        decoder time for the same chunks) and 31% of the admitted turns stayed gap-free, against 87-92% with no
        cut at all (H200, 2026-12-04 evening, bench/results/GPU.md)."""
        settled = s.emitted_samples >= _SETTLED_S * self.sample_rate
        if left < 0:
            self.underruns += 1
            self.settled_underruns += settled
            self.on_underrun()
        elif left < NEAR_MISS_S and settled:
            self.near_misses += 1

    def _finish(self, s: ScheduledStream, streams: set) -> None:
        s.finished = True
        streams.discard(s)
        s._send(END)

    def _fail(self, s: ScheduledStream, exc: BaseException, streams: set) -> None:
        self.failures += 1
        s.finished = True
        streams.discard(s)
        s._send(exc)


def _own_cuda_stream(device: object) -> None:
    """Give this thread a high-priority CUDA stream of its own (no-op on CPU). With the LLM in the same process (the
    decoder host, pipeline/decoder_host.py, or engine `process: inproc`), kernels on separate streams of one context
    can overlap, and the priority lets a pass start between the LLM's kernels rather than after them. Only used there:
    with vLLM in its own process, decoder work on a stream of its own beside the speech tokenizer on the default stream
    hit an illegal memory access on an H100 (2026-11) and an H200 (2026-12-04, bench/results/GPU.md), cause unknown."""
    import torch

    dev = torch.device(device)  # type: ignore[arg-type]
    if dev.type == "cuda":
        torch.cuda.set_stream(torch.cuda.Stream(dev, priority=-1))
