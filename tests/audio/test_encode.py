"""Streaming encoders: every format decodes at its stated rate and length; streaming, speed, raw PCM."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest
import soxr

from glm4voice_api.audio.decode import decode_audio
from glm4voice_api.audio.encode import (
    OUTPUT_FORMATS,
    content_type,
    encode_whole,
    make_encoder,
    output_sample_rate,
)
from glm4voice_api.audio.errors import AudioError

IN_RATE = 22050
# format -> (FFmpeg demuxer, decoder) a client would use
DECODED_AS = {
    "mp3": ("mp3", "mp3float"),
    "opus": ("ogg", "opus"),
    "aac": ("aac", "aac"),
    "flac": ("flac", "flac"),
    "wav": ("wav", "pcm_s16le"),
}
CODEC_FORMATS = sorted(DECODED_AS)
# Lossy codecs add encoder delay/padding that a bare stream cannot signal (ADTS, streamed MP3).
DURATION_TOLERANCE_S = 0.1


def _tone(seconds: float, rate: int = IN_RATE, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _stream(
    fmt: str, samples: np.ndarray, chunk: int = 2205, *, input_rate: int = IN_RATE, speed: float = 1.0
) -> list[bytes]:
    """feed() in small chunks like the vocoder does; the last element is finish()."""
    encoder = make_encoder(fmt, input_rate=input_rate, speed=speed)
    outputs = [encoder.feed(samples[i : i + chunk]) for i in range(0, samples.size, chunk)]
    outputs.append(encoder.finish())
    return outputs


def _decode_pyav(data: bytes, demuxer: str) -> tuple[np.ndarray, int, str]:
    with av.open(io.BytesIO(data), format=demuxer) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        return np.concatenate(frames), stream.codec_context.sample_rate, stream.codec_context.name


def _dominant_freq(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate / samples.size)


@pytest.mark.parametrize("fmt", CODEC_FORMATS)
def test_streamed_output_decodes_at_stated_rate(fmt: str) -> None:
    data = b"".join(_stream(fmt, _tone(2.0)))
    demuxer, decoder = DECODED_AS[fmt]
    samples, rate, codec = _decode_pyav(data, demuxer)
    assert codec == decoder
    assert rate == output_sample_rate(fmt)
    assert abs(samples.size / rate - 2.0) < DURATION_TOLERANCE_S
    assert abs(_dominant_freq(samples, rate) - 440) < 5


@pytest.mark.parametrize("fmt", CODEC_FORMATS)
def test_whole_output_decodes_at_stated_rate(fmt: str) -> None:
    samples, rate, _ = _decode_pyav(encode_whole(fmt, _tone(2.0)), DECODED_AS[fmt][0])
    assert rate == output_sample_rate(fmt)
    assert abs(samples.size / rate - 2.0) < DURATION_TOLERANCE_S


@pytest.mark.parametrize("fmt", ["wav", "mp3", "flac", "opus"])
def test_whole_output_has_exact_length(fmt: str) -> None:
    # Seekable output lets the muxer record length/priming (WAV sizes, FLAC STREAMINFO, Xing/LAME, Ogg granules).
    samples, rate, _ = _decode_pyav(encode_whole(fmt, _tone(1.0)), DECODED_AS[fmt][0])
    assert samples.size == rate


@pytest.mark.parametrize("fmt", sorted(OUTPUT_FORMATS))
def test_round_trip_through_decode_audio(fmt: str) -> None:
    data = b"".join(_stream(fmt, _tone(1.0)))
    out = decode_audio(data, format=fmt, max_bytes=1 << 24, max_seconds=10.0)
    assert abs(out.size / 16000 - 1.0) < DURATION_TOLERANCE_S
    assert abs(_dominant_freq(out, 16000) - 440) < 5


@pytest.mark.parametrize("fmt", ["mp3", "pcm", "aac", "opus", "wav", "flac"])
def test_bytes_flow_before_finish(fmt: str) -> None:
    outputs = _stream(fmt, _tone(5.0), chunk=IN_RATE // 2)
    streamed = sum(len(chunk) for chunk in outputs[:-1])
    # Every 0.5 s chunk after the first few must already have produced audio, not just a header.
    assert all(outputs[3:-1])
    assert streamed > 0.8 * sum(len(chunk) for chunk in outputs)


def test_pcm_is_exactly_24k_s16le() -> None:
    tone = _tone(1.0)
    data = b"".join(_stream("pcm", tone))
    assert len(data) == 2 * 24000
    pcm = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767
    # Chunked resampling must equal resampling the whole clip: chunk boundaries add no clicks.
    offline = soxr.resample(tone, IN_RATE, 24000, quality="HQ")
    np.testing.assert_allclose(pcm, offline, atol=2 / 32767)
    assert b"".join(_stream("pcm16", tone)) == data


def test_pcm_at_24k_input_is_passed_through() -> None:
    tone = _tone(0.1, rate=24000)
    data = b"".join(_stream("pcm", tone, input_rate=24000))
    np.testing.assert_array_equal(np.frombuffer(data, "<i2"), np.rint(tone * 32767).astype("<i2"))


def test_streaming_wav_header_has_unknown_length() -> None:
    data = b"".join(_stream("wav", _tone(0.5)))
    riff, riff_size, wave, _, _, fmt_tag, channels, rate, _, _, bits, data_id, data_size = struct.unpack(
        "<4sI4s4sIHHIIHH4sI", data[:44]
    )
    assert (riff, wave, data_id) == (b"RIFF", b"WAVE", b"data")
    assert (fmt_tag, channels, rate, bits) == (1, 1, 24000, 16)
    assert riff_size == data_size == 0xFFFFFFFF
    assert len(data) == 44 + 2 * 12000


def test_whole_wav_header_is_exact() -> None:
    data = encode_whole("wav", _tone(0.5))
    riff_size, data_size = struct.unpack("<I", data[4:8])[0], struct.unpack("<I", data[40:44])[0]
    assert data_size == 2 * 12000
    assert riff_size == len(data) - 8


@pytest.mark.parametrize(("speed", "expected_s"), [(2.0, 1.0), (4.0, 0.5), (0.5, 4.0), (0.25, 8.0)])
def test_speed_changes_duration_not_pitch(speed: float, expected_s: float) -> None:
    data = b"".join(_stream("pcm", _tone(2.0), speed=speed))
    samples = np.frombuffer(data, dtype="<i2").astype(np.float32)
    assert samples.size / 24000 == pytest.approx(expected_s, rel=0.02)
    assert abs(_dominant_freq(samples, 24000) - 440) < 5


def test_speed_with_codec() -> None:
    samples, rate, _ = _decode_pyav(encode_whole("mp3", _tone(2.0), speed=2.0), "mp3")
    assert samples.size / rate == pytest.approx(1.0, rel=0.02)


def test_nan_input_gives_finite_output() -> None:
    tone = _tone(0.5)
    tone[100:200] = np.nan
    samples, _, _ = _decode_pyav(b"".join(_stream("flac", tone)), "flac")
    assert np.isfinite(samples).all()


@pytest.mark.parametrize("fmt", sorted(OUTPUT_FORMATS))
def test_finish_without_audio(fmt: str) -> None:
    encoder = make_encoder(fmt)
    assert isinstance(encoder.finish(), bytes)
    with pytest.raises(RuntimeError):
        encoder.feed(_tone(0.1))


def test_close_without_finish() -> None:
    encoder = make_encoder("opus")
    encoder.feed(_tone(0.5))
    encoder.close()
    encoder.close()


def test_content_types() -> None:
    assert content_type("mp3") == "audio/mpeg"
    assert content_type("opus") == "audio/opus"
    assert content_type("aac") == "audio/aac"
    assert content_type("flac") == "audio/flac"
    assert content_type("wav") == "audio/wav"
    assert content_type("pcm") == content_type("pcm16") == "audio/pcm"
    assert make_encoder("mp3").content_type == "audio/mpeg"


def test_unsupported_format() -> None:
    with pytest.raises(AudioError) as info:
        make_encoder("ogg_vorbis")
    assert info.value.code == "unsupported_format"


@pytest.mark.parametrize("speed", [0.2, 4.5])
def test_speed_out_of_range(speed: float) -> None:
    with pytest.raises(ValueError, match="speed"):
        make_encoder("mp3", speed=speed)


def test_rejects_multichannel_input() -> None:
    with pytest.raises(ValueError, match="mono"):
        make_encoder("pcm").feed(np.zeros((2, 100), np.float32))
