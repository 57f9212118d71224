"""Streaming encoders for every OpenAI audio output format.

The vocoder produces mono float32 at 22.05 kHz in chunks. An :class:`AudioEncoder` turns each chunk into
bytes of the requested format as soon as the codec allows, so the first bytes of a response leave early:

    samples --(atempo, if speed != 1)--> --(soxr, streaming)--> output rate --> s16le / FFmpeg codec + muxer

OpenAI clients hard-code the sample rates, so they are fixed per format: pcm/pcm16/wav/mp3/aac/flac are
24 kHz, opus is 48 kHz (the rate every Opus decoder outputs). Codecs and muxers come from FFmpeg via
PyAV, writing into an in-memory sink that is drained after every mux.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol, cast

import av
import numpy as np
import soxr
from av.error import FFmpegError
from av.filter import Graph

from glm4voice_api.audio.errors import UNSUPPORTED_FORMAT, AudioError

PCM_RATE = 24000
MIN_SPEED = 0.25
MAX_SPEED = 4.0

_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",  # the OpenAI-compatible servers' convention; the body is Ogg Opus (RFC 7845)
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "pcm16": "audio/pcm",
}
OUTPUT_FORMATS = frozenset(_CONTENT_TYPES)
_RAW_FORMATS = frozenset({"pcm", "pcm16", "wav"})


@dataclass(frozen=True)
class _CodecSpec:
    muxer: str
    codec: str
    sample_format: str  # what we hand the encoder, so PyAV need not convert
    rate: int
    bit_rate: int | None
    muxer_options: dict[str, str] = field(default_factory=dict)


_CODEC_SPECS = {
    # No ID3 tag: the response is a bare frame stream that clients can cut or concatenate anywhere.
    "mp3": _CodecSpec("mp3", "libmp3lame", "fltp", PCM_RATE, 64000, {"id3v2_version": "0"}),
    # Ogg buffers a page for 1 s by default; 100 ms pages keep latency low at ~2 kbit/s of overhead.
    "opus": _CodecSpec("ogg", "libopus", "flt", 48000, 48000, {"page_duration": "100000"}),
    # ADTS repeats a header on every frame, so an AAC stream is playable from any point without moov.
    "aac": _CodecSpec("adts", "aac", "fltp", PCM_RATE, 64000),
    "flac": _CodecSpec("flac", "flac", "s16", PCM_RATE, None),
}


def content_type(fmt: str) -> str:
    """Return the Content-Type for an output format (``"mp3"`` -> ``"audio/mpeg"``)."""
    return _CONTENT_TYPES[_check_format(fmt)]


def output_sample_rate(fmt: str) -> int:
    """Return the sample rate a decoder of ``fmt`` output will report."""
    fmt = _check_format(fmt)
    return PCM_RATE if fmt in _RAW_FORMATS else _CODEC_SPECS[fmt].rate


class AudioEncoder(Protocol):
    """Incremental encoder: ``feed`` returns the bytes ready now, ``finish`` flushes the rest."""

    format: str
    sample_rate: int
    content_type: str

    def feed(self, samples: np.ndarray) -> bytes:
        """Encode mono float32 samples at the encoder's input rate; return bytes ready so far."""
        ...

    def finish(self) -> bytes:
        """Flush the filters and the codec and return the remaining bytes. Call once."""
        ...

    def close(self) -> None:
        """Release codec resources without flushing (e.g. when the client went away)."""
        ...


def make_encoder(fmt: str, *, input_rate: int = 22050, speed: float = 1.0) -> AudioEncoder:
    """Create a streaming encoder for ``fmt`` (one of :data:`OUTPUT_FORMATS`).

    Raises AudioError(unsupported_format) for an unknown format and ValueError for a bad rate or speed.
    """
    fmt = _check_format(fmt)
    front = _FrontEnd(input_rate, output_sample_rate(fmt), speed)
    if fmt in _RAW_FORMATS:
        return _RawEncoder(fmt, front)
    return _CodecEncoder(fmt, front, _StreamSink())


def encode_whole(fmt: str, samples: np.ndarray, input_rate: int = 22050, *, speed: float = 1.0) -> bytes:
    """Encode a complete clip (non-streaming responses).

    Unlike the streaming output this can seek back, so WAV gets an exact header, FLAC an exact
    STREAMINFO (length, MD5) and MP3 a Xing/LAME header (exact duration and gapless trimming).
    """
    fmt = _check_format(fmt)
    front = _FrontEnd(input_rate, output_sample_rate(fmt), speed)
    if fmt in _RAW_FORMATS:
        raw = _RawEncoder("pcm", front)
        pcm = raw.feed(samples) + raw.finish()
        return wav_header(len(pcm)) + pcm if fmt == "wav" else pcm
    sink = _SeekableSink()
    encoder = _CodecEncoder(fmt, front, sink)
    encoder.feed(samples)
    encoder.finish()
    return sink.getvalue()


def wav_header(data_bytes: int | None, *, sample_rate: int = PCM_RATE) -> bytes:
    """Build a 44-byte RIFF/WAVE header for mono s16le; ``None`` means unknown length (streaming).

    Streaming TTS servers commonly send 0xFFFFFFFF sizes for a stream of unknown length; FFmpeg, browsers
    and soundfile then read to the end of the stream.
    """
    data_size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff_size = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    # fmt chunk: PCM tag 1, 1 channel, rate, byte rate, block align 2, 16 bits per sample
    fmt_chunk = struct.pack("<HHIIHH", 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE")
        + struct.pack("<4sI", b"fmt ", len(fmt_chunk))
        + fmt_chunk
        + struct.pack("<4sI", b"data", data_size)
    )


class StreamResampler:
    """Chunked soxr resampling whose output does not depend on where the chunks were cut (no clicks)."""

    def __init__(self, in_rate: int, out_rate: int, *, quality: str = "HQ") -> None:
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, "float32", quality)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Resample the next chunk; the output lags the input by the filter's delay."""
        return samples if self._stream is None else self._stream.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        """Return the delayed tail; the resampler cannot be used afterwards."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)


class _Tempo:
    """Pitch-preserving tempo change with FFmpeg's ``atempo``, fed frame by frame."""

    def __init__(self, rate: int, speed: float) -> None:
        self._rate = rate
        self._pts = 0
        self._graph = Graph()
        nodes = [self._graph.add_abuffer(sample_rate=rate, format="flt", layout="mono")]
        # atempo takes 0.5..100 per instance, but above 2.0 it drops samples instead of blending them,
        # so (as FFmpeg's docs advise) chain instances that each stay within 0.5..2.0.
        nodes += [self._graph.add("atempo", f"{factor:.6f}") for factor in _atempo_factors(speed)]
        nodes.append(self._graph.add("abuffersink"))
        self._graph.link_nodes(*nodes).configure()

    def process(self, samples: np.ndarray) -> np.ndarray:
        if samples.size == 0:
            return samples
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = self._rate
        frame.time_base = Fraction(1, self._rate)
        frame.pts = self._pts
        self._pts += samples.size
        self._graph.push(frame)
        return self._pull()

    def flush(self) -> np.ndarray:
        self._graph.push(None)
        return self._pull()

    def _pull(self) -> np.ndarray:
        chunks = [np.zeros(0, dtype=np.float32)]
        while True:
            try:
                chunks.append(self._graph.pull().to_ndarray()[0])
            except (BlockingIOError, EOFError):  # EAGAIN: needs more input; EOF: flushed
                return np.concatenate(chunks)


def _atempo_factors(speed: float) -> list[float]:
    factors: list[float] = []
    while speed > 2.0:
        factors.append(2.0)
        speed /= 2.0
    while speed < 0.5:
        factors.append(0.5)
        speed /= 0.5
    return [*factors, speed]


class _FrontEnd:
    """Input validation, tempo and resampling shared by every format."""

    def __init__(self, input_rate: int, output_rate: int, speed: float) -> None:
        if input_rate <= 0:
            msg = f"input_rate must be positive, got {input_rate}"
            raise ValueError(msg)
        if not MIN_SPEED <= speed <= MAX_SPEED:
            msg = f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}"
            raise ValueError(msg)
        self._tempo = None if speed == 1.0 else _Tempo(input_rate, speed)
        self._resampler = StreamResampler(input_rate, output_rate)

    def process(self, samples: np.ndarray) -> np.ndarray:
        samples = _as_mono_float(samples)
        if self._tempo is not None:
            samples = self._tempo.process(samples)
        return self._resampler.process(samples)

    def flush(self) -> np.ndarray:
        tail = np.zeros(0, dtype=np.float32)
        if self._tempo is not None:
            tail = self._resampler.process(self._tempo.flush())
        return np.concatenate([tail, self._resampler.flush()])


def _as_mono_float(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        msg = f"expected mono samples of shape [N], got shape {samples.shape}"
        raise ValueError(msg)
    # A NaN would poison the resampler state for the rest of the stream.
    return np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)


def _to_s16(samples: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")


class _RawEncoder:
    """pcm/pcm16 (headerless s16le) and streaming wav (the same, after a header of unknown length)."""

    def __init__(self, fmt: str, front: _FrontEnd) -> None:
        self.format = fmt
        self.sample_rate = PCM_RATE
        self.content_type = _CONTENT_TYPES[fmt]
        self._front = front
        self._pending_header = wav_header(None) if fmt == "wav" else b""
        self._finished = False

    def feed(self, samples: np.ndarray) -> bytes:
        self._check_open()
        return self._take_header() + _to_s16(self._front.process(samples)).tobytes()

    def finish(self) -> bytes:
        self._check_open()
        self._finished = True
        return self._take_header() + _to_s16(self._front.flush()).tobytes()

    def close(self) -> None:
        self._finished = True

    def _take_header(self) -> bytes:
        header, self._pending_header = self._pending_header, b""
        return header

    def _check_open(self) -> None:
        if self._finished:
            msg = f"{self.format} encoder is already finished"
            raise RuntimeError(msg)


class _StreamSink:
    """Write-only, unseekable file object: the muxer must write strictly in order, as we send it."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


class _SeekableSink(io.BytesIO):
    """Seekable sink for whole-clip encoding; the muxer may rewrite the header, so nothing is final early."""

    def take(self) -> bytes:
        return b""


class _CodecEncoder:
    """mp3/opus/aac/flac through an FFmpeg encoder and muxer writing into an in-memory sink."""

    def __init__(self, fmt: str, front: _FrontEnd, sink: _StreamSink | _SeekableSink) -> None:
        spec = _CODEC_SPECS[fmt]
        self.format = fmt
        self.sample_rate = spec.rate
        self.content_type = _CONTENT_TYPES[fmt]
        self._spec = spec
        self._front = front
        self._sink = sink
        self._pts = 0
        self._finished = False
        # flush_packets makes the muxer hand each packet to the sink at once instead of buffering 32 KiB.
        options = {"flush_packets": "1", **spec.muxer_options}
        self._container = av.open(sink, mode="w", format=spec.muxer, container_options=options)
        try:
            self._stream = self._add_stream(spec)
            self._container.start_encoding()  # the header goes out with the first feed()
        except Exception:
            self._container.close()
            raise

    def _add_stream(self, spec: _CodecSpec) -> av.AudioStream:
        try:
            stream = cast("av.AudioStream", self._container.add_stream(spec.codec, rate=spec.rate, layout="mono"))
        except FFmpegError as exc:
            msg = f"the bundled FFmpeg cannot encode {self.format}: encoder {spec.codec!r} is unavailable"
            raise AudioError(msg, code=UNSUPPORTED_FORMAT) from exc
        stream.codec_context.format = spec.sample_format
        if spec.bit_rate is not None:
            stream.codec_context.bit_rate = spec.bit_rate
        return stream

    def feed(self, samples: np.ndarray) -> bytes:
        self._check_open()
        self._encode(self._front.process(samples))
        return self._sink.take()

    def finish(self) -> bytes:
        self._check_open()
        self._finished = True
        self._encode(self._front.flush())
        self._container.mux(self._stream.encode(None))
        self._container.close()  # writes the trailer (final Ogg page, FLAC STREAMINFO when seekable)
        return self._sink.take()

    def close(self) -> None:
        if not self._finished:
            self._finished = True
            self._container.close()

    def _encode(self, samples: np.ndarray) -> None:
        if samples.size == 0:
            return
        array = _to_s16(samples) if self._spec.sample_format == "s16" else samples
        frame = av.AudioFrame.from_ndarray(array[None, :], format=self._spec.sample_format, layout="mono")
        frame.sample_rate = self._spec.rate
        frame.time_base = Fraction(1, self._spec.rate)
        frame.pts = self._pts
        self._pts += samples.size
        self._container.mux(self._stream.encode(frame))

    def _check_open(self) -> None:
        if self._finished:
            msg = f"{self.format} encoder is already finished"
            raise RuntimeError(msg)


def _check_format(fmt: str) -> str:
    if fmt not in OUTPUT_FORMATS:
        supported = ", ".join(sorted(OUTPUT_FORMATS))
        msg = f"unsupported output audio format {fmt!r}; supported formats are: {supported}"
        raise AudioError(msg, code=UNSUPPORTED_FORMAT)
    return fmt
