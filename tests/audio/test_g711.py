"""G.711 tables against FFmpeg's own codecs, and a round trip within the law's quantisation."""

from __future__ import annotations

import av
import numpy as np
import pytest

from glm4voice_api.audio import g711

CODECS = {"pcmu": "pcm_mulaw", "pcma": "pcm_alaw"}


def _ffmpeg_encode(s16: np.ndarray, codec: str) -> bytes:
    ctx = av.CodecContext.create(codec, "w")
    ctx.sample_rate, ctx.format, ctx.layout = 8000, "s16", "mono"
    frame = av.AudioFrame.from_ndarray(s16[None], format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
def test_matches_ffmpeg_and_round_trips(law: str) -> None:
    rng = np.random.default_rng(0)
    samples = np.concatenate([np.sin(np.arange(4000) / 7.0) * 0.7, rng.uniform(-1, 1, 4000)]).astype(np.float32)
    ours = g711.encode(samples, law)
    s16 = np.rint(np.clip(samples, -1, 1) * 32767).astype(np.int16)
    assert ours == _ffmpeg_encode(s16, CODECS[law])
    back = g711.decode(ours, law)
    assert back.dtype == np.float32 and len(back) == len(samples)
    # Logarithmic quantisation: the error grows with the amplitude, about 1/16 of it at worst.
    assert np.all(np.abs(back - samples) <= np.abs(samples) / 16 + 2e-3)
    assert g711.encode(np.zeros(0, np.float32), law) == b""
