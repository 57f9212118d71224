"""G.711 mu-law (`audio/pcmu`) and A-law (`audio/pcma`): 8 kHz telephony audio, one byte per sample.

FFmpeg's own pcm_mulaw / pcm_alaw codecs (through PyAV) define the mapping: on first use each codec encodes every
16-bit sample value once and decodes every byte once, and those two tables serve every frame afterwards. A 20 ms
frame (160 samples) is then one table lookup, cheap enough to run on the event loop, with no codec context opened
per frame.
"""

from __future__ import annotations

import functools
from typing import Literal

import av
import numpy as np

Law = Literal["pcmu", "pcma"]
RATE = 8000
_CODECS = {"pcmu": "pcm_mulaw", "pcma": "pcm_alaw"}


@functools.cache
def _tables(law: Law) -> tuple[np.ndarray, np.ndarray]:
    """(encode table indexed by s16 + 32768 -> byte, decode table byte -> float32 in [-1, 1))."""
    every = np.arange(-32768, 32768, dtype=np.int16)
    encoder = av.CodecContext.create(_CODECS[law], "w")
    encoder.sample_rate, encoder.format, encoder.layout = RATE, "s16", "mono"
    frame = av.AudioFrame.from_ndarray(every[None], format="s16", layout="mono")
    frame.sample_rate = RATE
    encoded = b"".join(bytes(p) for p in [*encoder.encode(frame), *encoder.encode(None)])
    decoder = av.CodecContext.create(_CODECS[law], "r")
    decoder.sample_rate, decoder.layout = RATE, "mono"
    decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in decoder.decode(av.Packet(bytes(range(256))))])
    if len(encoded) != len(every) or len(decoded) != 256:
        raise RuntimeError(f"FFmpeg {_CODECS[law]} gave unexpected table sizes")
    return np.frombuffer(encoded, np.uint8).copy(), decoded.astype(np.float32) / 32768.0


def encode(samples: np.ndarray, law: Law) -> bytes:
    """float32 samples in [-1, 1] (8 kHz) -> one byte per sample."""
    s16 = np.rint(np.clip(np.asarray(samples, np.float32), -1.0, 1.0) * 32767.0).astype(np.int32)
    return _tables(law)[0][s16 + 32768].tobytes()


def decode(data: bytes, law: Law) -> np.ndarray:
    """One byte per sample -> float32 samples (8 kHz)."""
    return _tables(law)[1][np.frombuffer(data, np.uint8)]
