"""Voice activity detection with Silero VAD (the model file shipped inside the `silero-vad` package).

Three parts:
- `VoiceActivityDetector`: the model, loaded once per process (`load()` blocks: call it from a worker thread).
  It runs on its own thread and batches the frames of every live stream into one forward pass, so the event loop
  never runs the model and many sessions cost little more than one.
- `VADStream`: one session's streaming state (RNN state, 64-sample context, hysteresis), fed 16 kHz float32 PCM
  of any length; yields `speech_started` / `speech_stopped` events with positions counted from its first sample.
- `split_on_pauses`: offline segmentation of a whole recording into speech segments, for cutting long audio.

The package's Python wrapper is not imported: importing `silero_vad` calls `torch.set_num_threads(1)` for the whole
process, and its model object keeps one hidden state, which many sessions cannot share. We load the shipped
TorchScript file and call its 16 kHz sub-model with an explicit state per stream instead (the same computation as
the wrapper's `__call__`; tests/unit/test_vad.py checks they agree).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FRAME_SAMPLES = 512  # the 16 kHz model takes exactly 512 new samples (32 ms) per step
CONTEXT_SAMPLES = 64  # ... preceded by the last 64 samples of the previous step
FRAME_MS = FRAME_SAMPLES * 1000 // SAMPLE_RATE
STATE_SHAPE = (2, 128)  # per stream: the LSTM's (h, c), laid out (2, batch, 128) by the model


@dataclass(frozen=True)
class VADConfig:
    """Turn detection settings, named as OpenAI's `server_vad` turn detection."""

    threshold: float = 0.5
    """Speech starts when a frame's speech probability reaches this."""
    prefix_padding_ms: int = 300
    """Audio kept before the detected start (reported in `audio_start_ms`)."""
    silence_duration_ms: int = 500
    """Speech stops after this long below `neg_threshold` (reported in `audio_end_ms`, which includes it)."""
    neg_threshold: float | None = None
    """Speech continues while the probability stays above this; default `threshold - 0.15` (Silero's hysteresis)."""
    min_speech_ms: int = 0
    """Speech shorter than this (from start to the first silent frame) is dropped without a `speech_stopped`."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.prefix_padding_ms < 0 or self.silence_duration_ms < 0 or self.min_speech_ms < 0:
            raise ValueError("prefix_padding_ms, silence_duration_ms and min_speech_ms must be >= 0")

    @property
    def low(self) -> float:
        return max(0.01, self.threshold - 0.15) if self.neg_threshold is None else self.neg_threshold


@dataclass(frozen=True)
class VADEvent:
    kind: Literal["speech_started", "speech_stopped"]
    sample: int
    """OpenAI's position: for a start the detected start minus the prefix padding (at least 0); for a stop the
    point where the silence lasted `silence_duration_ms` (so it includes it)."""
    speech_sample: int
    """The model's own boundary: the first speech frame for a start, the first silent frame for a stop."""

    @property
    def ms(self) -> int:
        return self.sample * 1000 // SAMPLE_RATE


def _model_file() -> Path:
    # find_spec locates the installed package without running its __init__ (see the module docstring).
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("silero-vad is not installed (pip install silero-vad)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.jit"
    if not path.is_file():
        raise RuntimeError(f"silero-vad installed without its model file: {path}")
    return path


class VADStream:
    """One audio stream's detector state. `push` is for `VoiceActivityDetector.feed`; read the fields freely."""

    def __init__(self, detector: VoiceActivityDetector, config: VADConfig) -> None:
        self.detector = detector
        self.config = config
        self.state = np.zeros((STATE_SHAPE[0], 1, STATE_SHAPE[1]), np.float32)
        self.context = np.zeros(CONTEXT_SAMPLES, np.float32)
        self.pending = np.zeros(0, np.float32)
        self.frames_done = 0
        self.speaking = False
        self.speech_start = 0  # first speech frame's sample (while speaking)
        self.silent_since: int | None = None  # first silent frame's sample while speaking

    @property
    def samples_seen(self) -> int:
        return self.frames_done * FRAME_SAMPLES + len(self.pending)

    def take_frames(self, pcm: np.ndarray) -> np.ndarray:
        """Append samples; return the complete 512-sample frames now available, shape (n, 512)."""
        buf = np.concatenate([self.pending, np.asarray(pcm, np.float32).reshape(-1)])
        n = len(buf) // FRAME_SAMPLES
        self.pending = buf[n * FRAME_SAMPLES :]
        return buf[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)

    def step(self, prob: float) -> VADEvent | None:
        """Advance the hysteresis by one frame's probability."""
        cfg = self.config
        start = self.frames_done * FRAME_SAMPLES
        self.frames_done += 1
        end = start + FRAME_SAMPLES
        if not self.speaking:
            if prob >= cfg.threshold:
                self.speaking, self.speech_start, self.silent_since = True, start, None
                padded = max(0, start - cfg.prefix_padding_ms * SAMPLE_RATE // 1000)
                return VADEvent("speech_started", padded, start)
            return None
        if prob >= cfg.threshold or (prob >= cfg.low and self.silent_since is None):
            self.silent_since = None
            return None
        if self.silent_since is None:
            self.silent_since = start
        if end - self.silent_since >= cfg.silence_duration_ms * SAMPLE_RATE // 1000:
            self.speaking = False
            if self.silent_since - self.speech_start < cfg.min_speech_ms * SAMPLE_RATE // 1000:
                return None
            return VADEvent("speech_stopped", end, self.silent_since)
        return None

    async def feed(self, pcm_16k: np.ndarray) -> list[VADEvent]:
        """Run the new audio through the model (on the detector's thread); events in order."""
        return await self.detector.feed(self, pcm_16k)


@dataclass(eq=False)
class _Job:
    stream: VADStream
    frames: np.ndarray
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[VADEvent]]


class VoiceActivityDetector:
    """The Silero VAD model plus its one owner thread, which batches the frames of all streams."""

    def __init__(self, model: object, *, max_batch: int = 64) -> None:
        self._model = model  # the TorchScript 16 kHz sub-model: (x (B, 64+512), state (2, B, 128)) -> (p, state)
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def load(cls, **kwargs: int) -> VoiceActivityDetector:
        """Load the shipped model (blocking, ~50 ms)."""
        import warnings

        import torch

        with warnings.catch_warnings():  # torch 2.13 deprecates jit.load; the package ships TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(_model_file()), map_location="cpu").eval()
        return cls(module._model, **kwargs)

    @classmethod
    @functools.cache
    def shared(cls) -> VoiceActivityDetector:
        """One detector per process for offline use (`split_on_pauses` without a detector)."""
        return cls.load()

    def stream(self, config: VADConfig | None = None) -> VADStream:
        return VADStream(self, config or VADConfig())

    # -- the model -------------------------------------------------------------------------------------------
    def probabilities(self, frames: np.ndarray, contexts: np.ndarray, states: np.ndarray) -> tuple:
        """One step for B streams: frames (B, 512), contexts (B, 64), states (2, B, 128) -> (probs (B,), states).

        Blocking; thread-safe (no state is kept in the model)."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.concatenate([contexts, frames], axis=1).astype(np.float32, copy=False))
            out, state = self._model(x, torch.from_numpy(np.ascontiguousarray(states, np.float32)))
        return out.reshape(-1).numpy().copy(), state.numpy().copy()

    def run_sync(self, stream: VADStream, pcm_16k: np.ndarray) -> list[VADEvent]:
        """Feed one stream on the calling thread (offline use, tests)."""
        return self._run_jobs([(stream, stream.take_frames(pcm_16k))])[0]

    def _run_jobs(self, jobs: list[tuple[VADStream, np.ndarray]]) -> list[list[VADEvent]]:
        events: list[list[VADEvent]] = [[] for _ in jobs]
        step = 0
        while True:
            live = [i for i, (_, frames) in enumerate(jobs) if step < len(frames)]
            if not live:
                return events
            streams = [jobs[i][0] for i in live]
            frames = np.stack([jobs[i][1][step] for i in live])
            contexts = np.stack([s.context for s in streams])
            states = np.concatenate([s.state for s in streams], axis=1)
            probs, states = self.probabilities(frames, contexts, states)
            for k, (i, s) in enumerate(zip(live, streams, strict=True)):
                s.state = states[:, k : k + 1]
                s.context = frames[k, -CONTEXT_SAMPLES:].copy()
                if (event := s.step(float(probs[k]))) is not None:
                    events[i].append(event)
            step += 1

    # -- the owner thread ------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("VoiceActivityDetector was closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="vad", daemon=True)
                self._thread.start()

    async def feed(self, stream: VADStream, pcm_16k: np.ndarray) -> list[VADEvent]:
        frames = stream.take_frames(pcm_16k)
        if not len(frames):
            return []
        self.start()
        loop = asyncio.get_running_loop()
        job = _Job(stream, frames, loop, loop.create_future())
        with self._lock:  # ordered against close(): no job lands behind the stop sentinel
            if self._closed:
                raise RuntimeError("VoiceActivityDetector was closed")
            self._queue.put(job)
        return await job.future

    def _serve(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            stop = False
            while len(jobs) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.append(more)
            self._settle(jobs)
            if stop:
                return

    def _settle(self, jobs: list[_Job]) -> None:
        # One stream's jobs must run in order: the second waits for the next batch.
        batch: list[_Job] = []
        later: list[_Job] = []
        seen: set[int] = set()
        for job in jobs:
            (later if id(job.stream) in seen else batch).append(job)
            seen.add(id(job.stream))
        try:
            results: list = self._run_jobs([(j.stream, j.frames) for j in batch])
        except Exception as exc:  # handed to every waiting caller
            logger.exception("VAD pass failed")
            results = [exc] * len(batch)
        for job, result in zip(batch, results, strict=True):
            job.loop.call_soon_threadsafe(_resolve, job.future, result)
        if later:
            self._settle(later)

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
            self._queue.put(None)
        if thread is not None:
            await asyncio.to_thread(thread.join, 10)


def _resolve(future: asyncio.Future, result: list[VADEvent] | Exception) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def speech_probabilities(detector: VoiceActivityDetector, pcm_16k: np.ndarray, *, window_s: float = 30.0) -> np.ndarray:
    """Per-frame speech probability of a whole recording (blocking).

    Long audio is cut into windows run side by side as one batch; each window starts 0.5 s early so that its
    state has settled by its first counted frame."""
    pcm = np.asarray(pcm_16k, np.float32).reshape(-1)
    n = len(pcm) // FRAME_SAMPLES
    if n == 0:
        return np.zeros(0, np.float32)
    per = max(1, int(window_s * SAMPLE_RATE) // FRAME_SAMPLES)
    warm = 16
    starts = list(range(0, n, per))
    steps = max(min(per, n - s) + min(warm, s) for s in starts)
    frames = np.zeros((len(starts), steps, FRAME_SAMPLES), np.float32)
    for b, s in enumerate(starts):
        lead = min(warm, s)
        count = min(per, n - s) + lead
        frames[b, :count] = pcm[(s - lead) * FRAME_SAMPLES : (s - lead + count) * FRAME_SAMPLES].reshape(count, -1)
    contexts = np.zeros((len(starts), CONTEXT_SAMPLES), np.float32)
    states = np.zeros((STATE_SHAPE[0], len(starts), STATE_SHAPE[1]), np.float32)
    probs = np.zeros((len(starts), steps), np.float32)
    for t in range(steps):
        probs[:, t], states = detector.probabilities(frames[:, t], contexts, states)
        contexts = frames[:, t, -CONTEXT_SAMPLES:]
    out = np.zeros(n, np.float32)
    for b, s in enumerate(starts):
        lead = min(warm, s)
        count = min(per, n - s)
        out[s : s + count] = probs[b, lead : lead + count]
    return out


def split_on_pauses(
    pcm_16k: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    config: VADConfig | None = None,
    detector: VoiceActivityDetector | None = None,
    pad_ms: int = 100,
    max_segment_s: float | None = None,
) -> list[tuple[float, float]]:
    """Speech segments `(start_s, end_s)` of a recording, cut where the speaker pauses (blocking).

    A pause is `config.silence_duration_ms` below the hysteresis' low threshold; segments are padded by `pad_ms`
    on both sides (clipped to the audio, merged where they touch). With `max_segment_s`, a longer segment is cut at
    its least speech-like frame in the second half of each stretch of that length."""
    if sample_rate != SAMPLE_RATE:
        import soxr

        pcm_16k = soxr.resample(np.asarray(pcm_16k, np.float32), sample_rate, SAMPLE_RATE)
    config = config or VADConfig()
    detector = detector or VoiceActivityDetector.shared()
    probs = speech_probabilities(detector, pcm_16k)
    duration = len(pcm_16k) / SAMPLE_RATE
    stream = VADStream(detector, config)
    raw: list[list[int]] = []  # in frames: [first speech frame, first silent frame)
    for p in probs:
        event = stream.step(float(p))
        if event is not None and event.kind == "speech_started":
            raw.append([event.speech_sample // FRAME_SAMPLES, -1])
        elif event is not None:
            raw[-1][1] = event.speech_sample // FRAME_SAMPLES
    if raw and stream.speaking:
        raw[-1][1] = len(probs) if stream.silent_since is None else stream.silent_since // FRAME_SAMPLES
    raw = [r for r in raw if r[1] > r[0]]  # drops starts whose speech was shorter than min_speech_ms
    pad = pad_ms / 1000
    segments: list[tuple[float, float]] = []
    for a, b in raw:
        start = max(0.0, a * FRAME_MS / 1000 - pad)
        end = min(duration, b * FRAME_MS / 1000 + pad)
        if segments and start <= segments[-1][1]:
            start = segments.pop()[0]
        segments.append((start, end))
    if max_segment_s:
        segments = [piece for seg in segments for piece in _cut_long(seg, probs, max_segment_s)]
    return segments


def _cut_long(segment: tuple[float, float], probs: np.ndarray, limit_s: float) -> list[tuple[float, float]]:
    """Cut a segment longer than `limit_s` at its least speech-like frame in the second half of each stretch."""
    start, end = segment
    pieces: list[tuple[float, float]] = []
    frame_s = FRAME_MS / 1000
    while end - start > limit_s:
        lo = int((start + limit_s / 2) / frame_s)
        hi = max(lo + 1, min(len(probs), int((start + limit_s) / frame_s)))
        cut = (lo + int(np.argmin(probs[lo:hi]))) * frame_s
        cut = min(max(cut, start + frame_s), start + limit_s)
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces
