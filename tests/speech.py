"""Speech recordings for tests, spoken by espeak-ng (Debian package; `scripts/install.sh test` installs it).

Formant-synthesised speech, not a person: enough for a voice activity detector and the speech tokenizer to see
speech (pitch, formants, pauses between phrases), made on demand so that no binary fixture is stored.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import wave

import numpy as np
import pytest


@functools.cache
def _espeak(text: str, voice: str, words_per_minute: int) -> tuple[np.ndarray, int]:
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.fail("espeak-ng not found: `scripts/install.sh test` installs it (apt package espeak-ng)")
    out = subprocess.run(
        [exe, "-v", voice, "-s", str(words_per_minute), "--stdout", text], check=True, capture_output=True
    ).stdout
    with wave.open(io.BytesIO(out)) as w:
        rate = w.getframerate()
        # espeak-ng writes a streaming header with a bogus frame count; read whatever data there is.
        data = w.readframes(1 << 30)
    return np.frombuffer(data, np.int16).astype(np.float32) / 32768.0, rate


def speech(text: str, rate: int = 16000, *, voice: str = "en-us", words_per_minute: int = 160) -> np.ndarray:
    """Mono float32 speech of `text` at `rate` Hz (trimmed of espeak's own leading/trailing silence)."""
    import soxr

    samples, native = _espeak(text, voice, words_per_minute)
    voiced = np.flatnonzero(np.abs(samples) > 1e-3)
    samples = samples[voiced[0] : voiced[-1] + 1] if len(voiced) else samples
    return samples if rate == native else soxr.resample(samples, native, rate).astype(np.float32)


def silence(seconds: float, rate: int = 16000) -> np.ndarray:
    return np.zeros(int(seconds * rate), np.float32)


def pcm16_bytes(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
