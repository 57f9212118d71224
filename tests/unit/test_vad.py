"""Silero VAD wrapper: same numbers as the package's own stateful model, streaming events on recorded speech,
batching across streams, offline segmentation."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from glm4voice_api.audio.vad import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    VADConfig,
    VoiceActivityDetector,
    _model_file,
    speech_probabilities,
    split_on_pauses,
)
from tests.speech import silence, speech

FIRST = "Hello there. How is the weather in Berlin today?"
SECOND = "I would like to go for a walk by the river."


@pytest.fixture(scope="module")
def detector() -> VoiceActivityDetector:
    return VoiceActivityDetector.load()


@pytest.fixture(scope="module")
def two_phrases() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """0.6 s silence, phrase, 1.2 s silence, phrase, 1 s silence; returns audio and the phrases' true spans."""
    a, b = speech(FIRST), speech(SECOND)
    parts = [silence(0.6), a, silence(1.2), b, silence(1.0)]
    t0 = 0.6
    t1 = t0 + len(a) / SAMPLE_RATE
    t2 = t1 + 1.2
    t3 = t2 + len(b) / SAMPLE_RATE
    return np.concatenate(parts), [(t0, t1), (t2, t3)]


def test_explicit_state_matches_the_packaged_stateful_model(detector, two_phrases) -> None:
    import torch

    audio = two_phrases[0][: 200 * FRAME_SAMPLES]
    wrapper = torch.jit.load(str(_model_file()), map_location="cpu").eval()
    with torch.inference_mode():
        expected = [float(wrapper(torch.from_numpy(f)[None], SAMPLE_RATE)) for f in audio.reshape(-1, FRAME_SAMPLES)]
    ours = speech_probabilities(detector, audio)
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert max(expected) > 0.9 and min(expected) < 0.1  # real speech and real silence in the slice


def test_stream_finds_both_phrases_in_20ms_frames(detector, two_phrases) -> None:
    audio, truth = two_phrases
    config = VADConfig(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    stream = detector.stream(config)
    events = []
    for i in range(0, len(audio), 320):  # 20 ms frames, as a client sends them
        events += detector.run_sync(stream, audio[i : i + 320])
    assert [e.kind for e in events] == ["speech_started", "speech_stopped"] * 2
    for (start, stop), (t0, t1) in zip(zip(events[::2], events[1::2], strict=True), truth, strict=True):
        assert abs(start.speech_sample / SAMPLE_RATE - t0) < 0.15
        assert start.sample == max(0, start.speech_sample - 300 * 16)  # OpenAI's audio_start_ms has the padding
        assert abs(stop.speech_sample / SAMPLE_RATE - t1) < 0.25
        # audio_end_ms includes the silence duration: the stop is known 500 ms (to a frame) after the speech ends
        assert 500 <= (stop.sample - stop.speech_sample) * 1000 / SAMPLE_RATE < 500 + 32
        assert stop.ms == stop.sample * 1000 // SAMPLE_RATE
    assert stream.samples_seen == len(audio)


def test_chunking_does_not_change_events(detector, two_phrases) -> None:
    audio = two_phrases[0]
    whole = detector.run_sync(detector.stream(), audio)
    stream = detector.stream()
    pieces = []
    for i in range(0, len(audio), 1000):
        pieces += detector.run_sync(stream, audio[i : i + 1000])
    assert whole == pieces and len(whole) == 4


def test_silence_and_a_short_pause_inside_speech(detector) -> None:
    assert detector.run_sync(detector.stream(), silence(3.0)) == []
    audio = np.concatenate([silence(0.5), speech(FIRST), silence(0.25), speech(SECOND), silence(1.0)])
    events = detector.run_sync(detector.stream(VADConfig(silence_duration_ms=500)), audio)
    assert [e.kind for e in events] == ["speech_started", "speech_stopped"]  # 250 ms is no turn end
    events = detector.run_sync(detector.stream(VADConfig(silence_duration_ms=150)), audio)
    assert len(events) >= 4


async def test_streams_fed_concurrently_are_batched_and_independent(detector, two_phrases) -> None:
    audio = two_phrases[0]
    other = np.concatenate([silence(1.5), speech(SECOND), silence(1.0)])
    expected = [detector.run_sync(detector.stream(), x) for x in (audio, other)]

    async def drive(x: np.ndarray) -> list:
        stream = detector.stream()
        events = []
        for i in range(0, len(x), 320):
            events += await stream.feed(x[i : i + 320])
        return events

    got = await asyncio.gather(drive(audio), drive(other))
    assert got == expected


def test_split_on_pauses_segments_and_resampling(detector, two_phrases) -> None:
    audio, truth = two_phrases
    segments = split_on_pauses(audio, detector=detector)
    assert len(segments) == 2
    for (start, end), (t0, t1) in zip(segments, truth, strict=True):
        assert start <= t0 + 0.1 and end >= t1 - 0.1 and end - start < (t1 - t0) + 0.8
    import soxr

    at_24k = soxr.resample(audio, SAMPLE_RATE, 24000).astype(np.float32)
    again = split_on_pauses(at_24k, 24000, detector=detector)
    assert len(again) == 2 and all(abs(a - b) < 0.1 for s, t in zip(again, segments) for a, b in zip(s, t))
    assert split_on_pauses(silence(2.0), detector=detector) == []


def test_split_on_pauses_cuts_long_speech(detector) -> None:
    audio = np.concatenate([speech(FIRST + " " + SECOND + " " + FIRST), silence(0.5)])
    assert len(audio) / SAMPLE_RATE > 6
    segments = split_on_pauses(audio, detector=detector, max_segment_s=2.5)
    assert len(segments) >= 3
    assert all(end - start <= 2.5 + 1e-6 for start, end in segments)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(segments))  # contiguous: no audio lost at cuts


def test_windowed_probabilities_match_sequential(detector) -> None:
    audio = np.concatenate([speech(FIRST), silence(0.7), speech(SECOND)] * 2)
    whole = speech_probabilities(detector, audio, window_s=1000)
    windowed = speech_probabilities(detector, audio, window_s=2.0)
    assert whole.shape == windowed.shape
    assert np.mean(np.abs(whole - windowed)) < 0.02
    assert np.array_equal(whole > 0.5, windowed > 0.5) or np.mean((whole > 0.5) != (windowed > 0.5)) < 0.02


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        VADConfig(threshold=1.5)
    with pytest.raises(ValueError):
        VADConfig(silence_duration_ms=-1)
    assert VADConfig(threshold=0.6).low == pytest.approx(0.45)


async def test_closed_detector_refuses() -> None:
    det = VoiceActivityDetector.load()
    stream = det.stream()
    assert await stream.feed(silence(0.1)) == []
    await det.close()
    with pytest.raises(RuntimeError):
        await stream.feed(silence(0.1))
