"""The API process's side of the speech decoder hosted in vLLM's model process (pipeline/decoder_host.py says why).

`RemoteDecoder` stands in for a `DecoderScheduler`: `open_stream` gives a stream with the same `push`, `audio`,
`decode` and `close`, and the counters and pass log the server and benchmarks read are the host's, mirrored from its
reports. The event loop sends commands (one PUSH socket, used from the loop's thread only); a receiver thread reads
the host's results and hands each stream's audio to its asyncio queue, as the local scheduler's thread does.
`RemoteTokenizer` stands in for the speech tokenizer's worker when the host runs the tokenizer too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.pipeline.decoder_scheduler import PASS_LOG_SIZE, DecoderStoppedError
from glm4voice_api.pipeline.scheduled_stream import END, StreamAudio

logger = logging.getLogger(__name__)

COUNTERS = (
    "batches",
    "chunks",
    "underruns",
    "settled_underruns",
    "near_misses",
    "failures",
    "busy_seconds",
    "first_chunks",
    "first_supply_s",
    "first_wait_s",
    "first_pass_s",
)
"""The scheduler's counters mirrored on the API side (bench/gpu_server.py and admission control read them)."""


class RemoteStream(StreamAudio):
    """One reply's decoder session in the host: `ScheduledStream`'s interface for the event loop."""

    def __init__(self, decoder: RemoteDecoder, sid: int, voice: Voice | None, live: bool) -> None:
        super().__init__()
        self._decoder = decoder
        self.sid = sid
        self.live = live
        decoder._send("open", sid, voice, live)

    def push(self, tokens: list[int], *, final: bool = False) -> None:
        if self.closed:
            raise RuntimeError("stream is closed")
        self._decoder._send("tokens", self.sid, list(tokens), final)

    def close(self) -> None:
        """Free the host's session; safe to call more than once and from any path (a host gone included)."""
        if not self.closed:
            self.closed = True
            try:
                self._decoder._send("close", self.sid)
            except DecoderStoppedError:
                self._decoder._forget(self.sid)


class RemoteDecoder:
    """A `DecoderScheduler` stand-in whose decoder runs in vLLM's model process."""

    def __init__(self, folder: Path | None = None) -> None:
        import zmq

        # A short folder: a socket path has ~107 bytes at most (sun_path), which a deep cache folder can exceed.
        base = folder or Path(tempfile.gettempdir())
        name = uuid.uuid4().hex[:12]
        self._paths = [base / f"g4v-decoder-{name}-cmd", base / f"g4v-decoder-{name}-out"]
        self.to_host, self.to_api = (f"ipc://{path}" for path in self._paths)
        self._ctx = zmq.Context()
        self._tx, self._rx = self._ctx.socket(zmq.PUSH), self._ctx.socket(zmq.PULL)
        for sock in (self._tx, self._rx):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
        self._tx.bind(self.to_host)
        self._rx.bind(self.to_api)
        self._ids = itertools.count(1)
        self._streams: dict[int, RemoteStream] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._ready: asyncio.Future | None = None
        self._thread: threading.Thread | None = None
        self._stopped: str | None = None
        self.on_underrun: Callable[[], None] = lambda: None
        self.sample_rate = 22050
        self.device = "?"
        self._pass_seconds = 0.1
        self.pass_log: deque = deque(maxlen=PASS_LOG_SIZE)
        for name in COUNTERS:
            setattr(self, name, 0)
        self.tokens_per_second: float | None = None
        """Set when the host runs the speech tokenizer too (its tokens per second of audio)."""
        self.tokenizer_busy_seconds = 0.0
        self.solo_passes = 0
        """Passes the host ran with the LLM held (pipeline/llm_pause.py)."""
        self.host_thread_cpu_s: dict[str, float] = {}
        """CPU seconds of the host process's threads by role (vLLM's step loop is `main`), as last reported."""
        self._waiting: dict[int, asyncio.Future] = {}  # requests that get one answer: tokenize, rules
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, launch: Callable[[dict], Awaitable[object]], spec: dict, timeout_s: float = 900) -> None:
        """Have `launch` start the host with `spec` plus our socket addresses, and wait until it is ready."""
        loop = self._loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._thread = threading.Thread(target=self._receive, args=(loop,), name="decoder-remote", daemon=True)
        self._thread.start()
        await launch({**spec, "to_host": self.to_host, "to_api": self.to_api})
        info = await asyncio.wait_for(self._ready, timeout_s)
        self.sample_rate, self.device = int(info["sample_rate"]), str(info["device"])
        self.tokens_per_second = info.get("tokens_per_second")
        hosted = "speech decoder and tokenizer" if self.tokens_per_second else "speech decoder"
        logger.info("%s in vLLM's model process, on %s", hosted, self.device)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._stopped is None

    async def close(self) -> None:
        try:
            self._send("stop")
        except Exception:
            logger.debug("could not tell the decoder host to stop", exc_info=True)
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        self._ctx.destroy(linger=0)
        for path in self._paths:  # ZeroMQ leaves the socket files of ipc:// endpoints behind
            path.unlink(missing_ok=True)

    def open_stream(self, voice: Voice | None = None, *, live: bool = False) -> RemoteStream:
        if not self.alive:
            raise DecoderStoppedError(f"the speech decoder has stopped ({self._stopped or 'not started'})")
        sid = next(self._ids)
        stream = RemoteStream(self, sid, voice, live)
        with self._lock:
            self._streams[sid] = stream
        return stream

    def active_streams(self) -> int:
        """Sessions opened and not yet freed by the host (leak checks, metrics)."""
        with self._lock:
            return len(self._streams)

    def set_underrun_callback(self, callback: Callable[[], None]) -> None:
        self.on_underrun = callback

    def pass_seconds(self) -> float:
        return self._pass_seconds

    async def tokenize(self, waveform_16k: np.ndarray) -> list[int]:
        """Speech tokens of one 16 kHz mono waveform, from the host's speech tokenizer (batched there)."""
        if self.tokens_per_second is None:
            raise RuntimeError("the decoder host does not run the speech tokenizer")
        return await self._ask("tokenize", np.ascontiguousarray(waveform_16k, dtype=np.float32))

    async def apply_rules(self, options_json: str) -> None:
        """`decoder_rules.apply_rules` in the host, with these speech_decoder settings (JSON); its RuntimeError
        (streams open) is raised here. For the benchmarks' live rules (bench/gpu_server.py)."""
        await self._ask("rules", options_json)

    async def profile_gpu(self, seconds: float) -> dict:
        """The host process's kernels for `seconds`, by CUDA stream (`gpu_profile.py`; bench/gpu_server.py)."""
        return await self._ask("profile", float(seconds))

    async def _ask(self, op: str, payload: Any) -> Any:
        if not self.alive:
            raise DecoderStoppedError(f"the speech decoder host has stopped ({self._stopped or 'not started'})")
        rid = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiting[rid] = future
        try:
            self._send(op, rid, payload)
            return await future
        finally:
            with self._lock:
                self._waiting.pop(rid, None)

    def _send(self, *message: Any) -> None:
        """Never blocks the event loop: with no host connected (not started, or gone) a PUSH socket would wait."""
        import zmq

        try:
            self._tx.send(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL), flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:  # zmq.Again included
            raise DecoderStoppedError(f"the speech decoder host is not reachable ({exc})") from exc

    def _receive(self, loop: asyncio.AbstractEventLoop) -> None:
        import zmq

        poller = zmq.Poller()
        poller.register(self._rx, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                if not poller.poll(200):
                    continue
                self._handle(loop, pickle.loads(self._rx.recv()))
        except zmq.ZMQError:
            if not self._stopping.is_set():
                logger.exception("the decoder host's results socket failed")
        finally:
            self._fail_all(self._stopped or "the decoder host connection closed")

    def _handle(self, loop: asyncio.AbstractEventLoop, message: tuple) -> None:
        op = message[0]
        if op in ("audio", "end", "error"):
            with self._lock:
                stream = self._streams.get(message[1])
            if stream is not None:
                item = message[2] if op == "audio" else END if op == "end" else RuntimeError(message[2])
                stream._send(item)
        elif op == "closed":
            self._forget(message[1])
        elif op == "stopped":  # the host's loop ended (an error in it, or a stop): every open stream fails now
            self._fail_all(str(message[1]))
        elif op == "stats":
            counters, passes = message[1], message[2]
            for name in COUNTERS:
                setattr(self, name, counters[name])
            self._pass_seconds = counters["pass_seconds"]
            self.tokenizer_busy_seconds = counters.get("tokenizer_busy_seconds", 0.0)
            self.solo_passes = counters.get("solo_passes", 0)
            self.host_thread_cpu_s = counters.get("thread_cpu_s", {})
            self.pass_log.extend(passes)
        elif op in ("tokenized", "untokenized", "ruled", "profiled"):
            with self._lock:
                future = self._waiting.get(message[1])
            if future is not None:
                ok = op in ("tokenized", "profiled")
                outcome = message[2] if ok else None if message[2] is None else RuntimeError(message[2])
                loop.call_soon_threadsafe(_settle, future, outcome)
        elif op == "underrun":
            self.on_underrun()
        elif op in ("ready", "failed") and self._ready is not None:
            value = message[1]

            def settle() -> None:
                if self._ready is not None and not self._ready.done():
                    if op == "ready":
                        self._ready.set_result(value)
                    else:
                        # The host is the default on one GPU: name the way back to the server's own process.
                        hint = "--no-speech-decoder.in-engine runs the speech models in the server's process"
                        failed = RuntimeError(f"the speech decoder host failed to start: {value} ({hint})")
                        self._ready.set_exception(failed)

            loop.call_soon_threadsafe(settle)
            if op == "failed":
                self._stopped = value

    def _forget(self, sid: int) -> None:
        with self._lock:
            self._streams.pop(sid, None)

    def _fail_all(self, reason: str) -> None:
        self._stopped = self._stopped or reason
        with self._lock:
            streams = list(self._streams.values())
            waiting = list(self._waiting.values())
        for stream in streams:
            stream._send(DecoderStoppedError(f"the speech decoder has stopped ({reason})"))
        if waiting and self._loop is not None and not self._loop.is_closed():
            error = DecoderStoppedError(f"the speech decoder host has stopped ({reason})")
            for future in waiting:
                self._loop.call_soon_threadsafe(_settle, future, error)


class RemoteTokenizer:
    """The speech tokenizer in the decoder's host: a `SpeechTokenizerWorker` stand-in for `AudioInput`."""

    def __init__(self, remote: RemoteDecoder) -> None:
        self._remote = remote

    async def tokenize(self, waveform_16k: np.ndarray) -> list[int]:
        return await self._remote.tokenize(waveform_16k)

    def set_max_wait_ms(self, max_wait_ms: float) -> None:
        """As the local worker's (bench/gpu_server.py's live rule): the host's next batch uses it."""
        if not 0 <= max_wait_ms <= 1000:
            raise ValueError(f"max_wait_ms must lie in [0, 1000], got {max_wait_ms}")
        self._remote._send("tokenizer_wait", float(max_wait_ms))

    @property
    def busy_seconds(self) -> float:
        return self._remote.tokenizer_busy_seconds

    async def close(self) -> None:
        """Nothing of its own: the host's tokenizer stops with the host (`RemoteDecoder.close`)."""


def _settle(future: asyncio.Future, outcome: Any) -> None:
    # On the caller's loop; the caller may have gone (cancelled) between the result and now.
    if not future.done():
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
