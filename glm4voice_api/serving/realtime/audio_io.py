"""The session's audio formats: client audio in (24 kHz pcm16 or 8 kHz G.711) to 16 kHz for the VAD and the
speech tokenizer; decoder audio (22.05 kHz) out to the client's format. Both directions resample with soxr
streams, so frames of any size join without clicks.
"""

from __future__ import annotations

import numpy as np

from glm4voice_api.audio import g711
from glm4voice_api.audio.encode import StreamResampler, make_encoder

MODEL_RATE = 16000  # what the VAD and the speech tokenizer take
PCM_RATE = 24000


def client_rate(fmt: str) -> int:
    return PCM_RATE if fmt == "audio/pcm" else g711.RATE


def bytes_per_second(fmt: str) -> int:
    return 2 * PCM_RATE if fmt == "audio/pcm" else g711.RATE


class InputConverter:
    """Client bytes -> float32 at 16 kHz. An odd trailing byte of pcm16 waits for the next append."""

    def __init__(self, fmt: str) -> None:
        self.format = fmt
        self._resampler = StreamResampler(client_rate(fmt), MODEL_RATE)
        self._carry = b""

    def convert(self, data: bytes) -> np.ndarray:
        if self.format == "audio/pcm":
            data = self._carry + data
            whole = len(data) - len(data) % 2
            self._carry = data[whole:]
            samples = np.frombuffer(data[:whole], "<i2").astype(np.float32) / 32768.0
        else:
            samples = g711.decode(data, "pcmu" if self.format == "audio/pcmu" else "pcma")
        return self._resampler.process(samples).astype(np.float32, copy=False)


class OutputConverter:
    """Decoder float32 (22.05 kHz) -> the client's format; `samples_out` counts client-rate samples sent."""

    def __init__(self, fmt: str, decoder_rate: int, speed: float = 1.0) -> None:
        self.format = fmt
        self._pcm = make_encoder("pcm16", input_rate=decoder_rate, speed=speed)  # 24 kHz s16le (atempo for speed)
        self._down = None if fmt == "audio/pcm" else StreamResampler(PCM_RATE, g711.RATE)
        self.samples_out = 0

    def feed(self, samples: np.ndarray) -> bytes:
        return self._convert(self._pcm.feed(samples), final=False)

    def finish(self) -> bytes:
        return self._convert(self._pcm.finish(), final=True)

    def close(self) -> None:
        self._pcm.close()

    def _convert(self, pcm: bytes, *, final: bool) -> bytes:
        if self._down is None:
            self.samples_out += len(pcm) // 2
            return pcm
        floats = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
        out = self._down.process(floats)
        if final:
            out = np.concatenate([out, self._down.flush()])
        self.samples_out += len(out)
        return g711.encode(out, "pcmu" if self.format == "audio/pcmu" else "pcma")

    @property
    def ms_out(self) -> int:
        return self.samples_out * 1000 // client_rate(self.format)
