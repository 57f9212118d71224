"""decode_audio / decode_base64_audio: round trips through every input format and every kind of bad input."""

from __future__ import annotations

import base64
import io
import struct

import av
import numpy as np
import pytest

from glm4voice_api.audio.decode import decode_audio, decode_base64_audio
from glm4voice_api.audio.errors import AudioError

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_seconds": 30.0}


def _tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _encode(muxer: str, codec: str, rate: int, channels: np.ndarray) -> bytes:
    """Encode planar float channels [C, S] with PyAV, independently of the code under test."""
    layout = "mono" if channels.shape[0] == 1 else "stereo"
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=muxer) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(channels, dtype=np.float32), format="fltp", layout=layout
        )
        frame.sample_rate = rate
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def _wav(
    samples: np.ndarray, rate: int, *, declared_bytes: int | None = None, declared_rate: int | None = None
) -> bytes:
    """Build a mono s16 WAV whose header may lie about the data size or the sample rate."""
    pcm = np.rint(samples * 32767).astype("<i2").tobytes()
    size = len(pcm) if declared_bytes is None else declared_bytes
    hdr_rate = declared_rate or rate
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + size,
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        hdr_rate,
        hdr_rate * 2,
        2,
        16,
        b"data",
        size,
    )
    return header + pcm


def _dominant_freq(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate / samples.size)


def _decode_error(data: bytes, **kwargs: object) -> AudioError:
    with pytest.raises(AudioError) as info:
        decode_audio(data, **{**LIMITS, **kwargs})
    return info.value


# muxer, codec, source rate, format hint
ROUND_TRIPS = [
    ("wav", "pcm_s16le", 44100, "wav"),
    ("wav", "pcm_f32le", 22050, "wav"),
    ("mp3", "libmp3lame", 44100, "mp3"),
    ("flac", "flac", 44100, "flac"),
    ("ogg", "libopus", 48000, "ogg"),
    ("webm", "libopus", 48000, "webm"),
    ("ipod", "aac", 44100, "m4a"),
    ("mp4", "aac", 24000, "mp4"),
    ("adts", "aac", 44100, "aac"),
]


@pytest.mark.parametrize(("muxer", "codec", "rate", "hint"), ROUND_TRIPS, ids=[f"{r[0]}-{r[1]}" for r in ROUND_TRIPS])
def test_round_trip_every_format(muxer: str, codec: str, rate: int, hint: str) -> None:
    data = _encode(muxer, codec, rate, _tone(rate, 1.0)[None])
    out = decode_audio(data, format=hint, **LIMITS)
    assert out.dtype == np.float32
    assert out.ndim == 1
    # Lossy codecs add priming/padding (AAC in ADTS cannot signal it), hence the 0.1 s slack.
    assert abs(out.size / 16000 - 1.0) < 0.1
    assert abs(_dominant_freq(out, 16000) - 440) < 5
    # Only the middle: lossy encoders ring at the tone's hard edges.
    assert 0.4 < np.abs(out[4000:12000]).max() <= 0.6


def test_stereo_is_averaged_to_mono() -> None:
    left = _tone(44100, 0.5, amp=0.8)
    out = decode_audio(_encode("wav", "pcm_s16le", 44100, np.stack([left, np.zeros_like(left)])), **LIMITS)
    assert np.abs(out).max() == pytest.approx(0.4, abs=0.02)
    cancelled = decode_audio(_encode("flac", "flac", 44100, np.stack([left, -left])), **LIMITS)
    assert np.abs(cancelled).max() < 1e-3


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
def test_resamples_to_16k(rate: int) -> None:
    out = decode_audio(_wav(_tone(rate, 0.5), rate), **LIMITS)
    assert abs(out.size - 8000) <= 2
    assert abs(_dominant_freq(out, 16000) - 440) < 5


def test_custom_target_rate() -> None:
    out = decode_audio(_wav(_tone(16000, 0.5), 16000), target_rate=24000, **LIMITS)
    assert abs(out.size - 12000) <= 2


def test_raw_pcm16_at_24k() -> None:
    pcm = np.rint(_tone(24000, 1.0) * 32767).astype("<i2")
    out = decode_audio(pcm.tobytes(), format="pcm16", **LIMITS)
    assert abs(out.size - 16000) <= 2
    assert abs(_dominant_freq(out, 16000) - 440) < 5


def test_raw_pcm_without_resampling_is_exact() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2")
    out = decode_audio(pcm.tobytes(), format="pcm", pcm_sample_rate=16000, **LIMITS)
    np.testing.assert_array_equal(out, pcm.astype(np.float32) / 32768)


def test_mismatched_hint_still_decodes() -> None:
    data = _wav(_tone(16000, 0.5), 16000)
    assert decode_audio(data, format="mp3", **LIMITS).size == 8000
    assert decode_audio(data, format="audio/x-wav", **LIMITS).size == 8000


def test_wav_labelled_pcm16_is_read_as_wav() -> None:
    out = decode_audio(_wav(_tone(16000, 0.5), 16000), format="pcm16", **LIMITS)
    assert out.size == 8000


def test_rate_change_mid_stream() -> None:
    # Concatenated MP3s at different rates: both halves must come out, at the right speed.
    first = _encode("mp3", "libmp3lame", 44100, _tone(44100, 1.0)[None])
    second = _encode("mp3", "libmp3lame", 22050, _tone(22050, 1.0)[None])
    out = decode_audio(first + second, **LIMITS)
    assert abs(out.size / 16000 - 2.0) < 0.2
    assert abs(_dominant_freq(out[-8000:], 16000) - 440) < 5


def test_truncated_wav_data_decodes_what_is_there() -> None:
    data = _wav(_tone(16000, 1.0), 16000)
    out = decode_audio(data[: 44 + 16000], **LIMITS)
    assert out.size == 8000


def test_lying_wav_size_is_not_trusted() -> None:
    out = decode_audio(_wav(_tone(16000, 0.5), 16000, declared_bytes=0x7FFFFFF0), **LIMITS)
    assert out.size == 8000


def test_nan_and_inf_never_returned() -> None:
    samples = _tone(16000, 0.25)
    samples[::7] = np.nan
    samples[1::7] = np.inf
    samples[2::7] = -1e30
    out = decode_audio(_encode("wav", "pcm_f32le", 16000, samples[None]), **LIMITS)
    assert np.isfinite(out).all()
    assert np.abs(out).max() <= 1.0


# --- bad input -----------------------------------------------------------------------------------------


def test_empty_bytes() -> None:
    assert _decode_error(b"").code == "empty_audio"


def test_wav_with_no_samples() -> None:
    assert _decode_error(_wav(np.zeros(0, np.float32), 16000)).code == "empty_audio"


def test_random_bytes() -> None:
    err = _decode_error(np.random.default_rng(0).bytes(4096), format="wav")
    assert err.code == "invalid_audio"


def test_png_is_not_audio() -> None:
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I4sIIBBBBB", 13, b"IHDR", 1, 1, 8, 2, 0, 0, 0) + bytes(64)
    err = _decode_error(png, param="file")
    assert err.code == "invalid_audio"
    assert err.param == "file"


@pytest.mark.parametrize("cut", [12, 30, 40])
def test_wav_truncated_inside_header(cut: int) -> None:
    assert _decode_error(_wav(_tone(16000, 0.5), 16000)[:cut]).code == "invalid_audio"


def test_wav_truncated_after_header() -> None:
    err = _decode_error(_wav(_tone(16000, 0.5), 16000)[:44])
    assert err.code == "empty_audio"
    assert "no samples" in err.message


def test_truncated_mp3() -> None:
    data = _encode("mp3", "libmp3lame", 44100, _tone(44100, 1.0)[None])
    assert _decode_error(data[:200], format="mp3").code == "invalid_audio"


def test_container_without_audio_stream() -> None:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    err = _decode_error(buf.getvalue())
    assert err.code == "invalid_audio"
    assert "no audio stream" in err.message


def test_wav_with_unknown_codec() -> None:
    data = bytearray(_wav(_tone(16000, 0.1), 16000))
    data[20:22] = struct.pack("<H", 0x1234)  # WAVE format tag no decoder knows
    assert _decode_error(bytes(data)).code == "unsupported_format"


def test_too_long_pcm_names_the_length() -> None:
    err = _decode_error(bytes(2 * 16000 * 31), format="pcm16", pcm_sample_rate=16000)
    assert err.code == "audio_too_long"
    assert err.message == "audio is 31.0 s long; the limit is 30.0 s"


def test_too_long_compressed_stops_early() -> None:
    # 40 s of FLAC silence is a few KiB: only the decoded duration can catch it.
    data = _encode("flac", "flac", 8000, np.zeros((1, 8000 * 40), np.float32))
    assert len(data) < 64 * 1024
    err = _decode_error(data)
    assert err.code == "audio_too_long"
    assert "30.0 s limit" in err.message


def test_forged_low_sample_rate_is_too_long() -> None:
    assert _decode_error(_wav(_tone(16000, 0.5), 16000, declared_rate=8)).code == "audio_too_long"


def test_forged_high_sample_rate_is_rejected() -> None:
    assert _decode_error(_wav(_tone(16000, 0.5), 16000, declared_rate=1_000_000)).code == "invalid_audio"


def test_too_large_checked_before_decoding() -> None:
    err = _decode_error(b"\x00" * 2048, max_bytes=1024)
    assert err.code == "audio_too_large"
    assert err.status_code == 413


def test_odd_length_pcm() -> None:
    err = _decode_error(b"\x00\x01\x02", format="pcm16")
    assert err.code == "invalid_audio"
    assert "odd byte count (3)" in err.message


def test_unknown_format_hint() -> None:
    err = _decode_error(_wav(_tone(16000, 0.1), 16000), format="xyz", param="input_audio.format")
    assert err.code == "unsupported_format"
    assert err.param == "input_audio.format"
    assert err.status_code == 400


# --- base64 --------------------------------------------------------------------------------------------


def test_base64_round_trip() -> None:
    b64 = base64.b64encode(_wav(_tone(16000, 0.5), 16000)).decode()
    assert decode_base64_audio(b64 + "\n", format="wav", **LIMITS).size == 8000


@pytest.mark.parametrize(
    "b64",
    ["not base64!", "QUJD\nREVG", "QUJDRA=", "QUJDRA", "data:audio/wav;base64,UklGRg==", "QUJD-_==", "ÄÖÜ="],
)
def test_invalid_base64(b64: str) -> None:
    with pytest.raises(AudioError) as info:
        decode_base64_audio(b64, **LIMITS)
    assert info.value.code == "invalid_base64"


def test_empty_base64() -> None:
    with pytest.raises(AudioError) as info:
        decode_base64_audio("  ", **LIMITS)
    assert info.value.code == "empty_audio"


def test_oversize_base64_rejected_by_length() -> None:
    # Not even valid base64: the length check must come first.
    with pytest.raises(AudioError) as info:
        decode_base64_audio("!" * 1369, max_bytes=1024, max_seconds=30.0)
    assert info.value.code == "audio_too_large"
    assert "1369 characters" in info.value.message


def test_wav_at_the_model_rate_is_exact_through_the_header_only_probe() -> None:
    """A WAV is opened with the demuxer forced and the stream probe kept to its header (decode.py: 5 ms less per
    request): every sample must still come out exactly, long files (several 16 KiB packets) and stereo included."""
    pcm = np.random.default_rng(0).integers(-32768, 32767, size=3 * 16000, dtype=np.int64).astype("<i2")
    want = pcm.astype(np.float32) / 32768
    data = _wav(np.zeros(0, np.float32), 16000, declared_bytes=pcm.nbytes)[:44] + pcm.tobytes()
    np.testing.assert_array_equal(decode_audio(data, format="wav", **LIMITS), want)
    stereo = _encode("wav", "pcm_s16le", 16000, np.stack([want, -want]))
    np.testing.assert_allclose(decode_audio(stereo, format=None, **LIMITS), 0.0, atol=1e-4)


@pytest.mark.parametrize(
    "codec",
    [
        "pcm_s16le",
        "pcm_s24le",
        "pcm_s32le",
        "pcm_f32le",
        "pcm_u8",
        "pcm_mulaw",
        "pcm_alaw",
        "adpcm_ima_wav",
        "adpcm_ms",
    ],
)
def test_every_wav_codec_decodes_the_same_with_the_header_only_probe(codec: str, monkeypatch) -> None:
    """The WAV path (demuxer forced, probe kept to the header) against FFmpeg's full probe, codec by codec."""
    from glm4voice_api.audio import decode

    tone = _tone(22050, 1.3)
    data = _encode("wav", codec, 22050, np.stack([tone, 0.5 * tone]))
    fast = decode_audio(data, format="wav", **LIMITS)
    monkeypatch.setattr(decode, "_is_riff_wave", lambda _data: False)
    np.testing.assert_array_equal(fast, decode_audio(data, format="wav", **LIMITS))
