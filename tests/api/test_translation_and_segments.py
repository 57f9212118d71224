"""Long audio cut at pauses (Silero VAD): verbose_json segments, srt and vtt carry the real times of each stretch of
speech; `include[]=logprobs`; POST /v1/audio/translations in every format. Bodies checked against the OpenAPI spec."""

from __future__ import annotations

import itertools
import re

import httpx
import numpy as np
import openai
import pytest

from glm4voice_api.audio.encode import encode_whole
from tests.api.conftest import RunningServer
from tests.api.realtime_schema import check_object
from tests.speech import silence, speech

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"
RATE = 22050


@pytest.fixture(scope="module")
def two_sentences() -> tuple[bytes, float]:
    """Speech, a 2 s pause, speech: (wav bytes, start of the second sentence in seconds)."""
    first, second = speech("The weather is fine today.", RATE), speech("Let us go for a walk.", RATE)
    lead = silence(0.5, RATE)
    audio = np.concatenate([lead, first, silence(2.0, RATE), second, silence(0.5, RATE)])
    return encode_whole("wav", audio), (len(lead) + len(first)) / RATE + 2.0


def _times(subtitle: str) -> list[tuple[str, str]]:
    return re.findall(r"(\d\d:\d\d:\d\d[.,]\d{3}) --> (\d\d:\d\d:\d\d[.,]\d{3})", subtitle)


def test_segments_follow_the_pauses(server: RunningServer, two_sentences: tuple[bytes, float]) -> None:
    wav, second_start = two_sentences
    client = server.client()
    result = client.audio.transcriptions.create(
        model=MODEL,
        file=("talk.wav", wav),
        response_format="verbose_json",
        timestamp_granularities=["segment"],
        temperature=0.0,
    )
    body = result.model_dump(exclude_unset=True)
    check_object("CreateTranscriptionResponseVerboseJson", body)
    spans = [(s.start, s.end) for s in result.segments]
    # Random weights may say nothing in a segment (then it is left out); the times of those present are the VAD's.
    assert all(0 <= a < b <= result.duration for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(spans))
    assert any(a >= second_start - 0.3 for a, _ in spans) or len(spans) < 2
    assert [s.id for s in result.segments] == list(range(len(spans)))
    assert all(s.no_speech_prob < 0.5 and s.avg_logprob <= 0 for s in result.segments)
    assert result.language != "unknown" or not any(c.isalpha() for c in result.text)  # detected from the text
    srt = client.audio.transcriptions.create(model=MODEL, file=("talk.wav", wav), response_format="srt")
    vtt = client.audio.transcriptions.create(model=MODEL, file=("talk.wav", wav), response_format="vtt")
    assert len(_times(srt)) == len(_times(vtt)) == len(spans)
    first_cue = _times(vtt)[0][0] if spans else None
    if spans:
        assert first_cue == f"00:00:{int(spans[0][0]):02d}.{round(spans[0][0] * 1000) % 1000:03d}"


def test_the_audio_is_cut_into_two_segments(server: RunningServer, two_sentences: tuple[bytes, float]) -> None:
    """Both sentences are heard as speech: two engine requests (usage counts both prompts' audio)."""
    wav, _ = two_sentences
    whole = server.client().audio.transcriptions.create(model=MODEL, file=("talk.wav", wav))
    audio_tokens = whole.usage.input_token_details.audio_tokens
    # The two sentences with padding, not the whole 6+ s file (its pauses are left out).
    assert 0 < audio_tokens < 12.5 * len(wav) / 2 / RATE - 12


def test_include_logprobs(server: RunningServer, two_sentences: tuple[bytes, float]) -> None:
    wav, _ = two_sentences
    result = server.client().audio.transcriptions.create(
        model=MODEL, file=("talk.wav", wav), include=["logprobs"], temperature=0.0
    )
    check_object("CreateTranscriptionResponseJson", result.model_dump(exclude_unset=True))
    logprobs = result.logprobs
    assert logprobs is not None and all(lp.logprob <= 0 for lp in logprobs)
    if result.text:
        assert logprobs
    plain = server.client().audio.transcriptions.create(model=MODEL, file=("talk.wav", wav))
    assert "logprobs" not in plain.model_dump(exclude_unset=True)
    with pytest.raises(openai.BadRequestError) as err:
        server.client().audio.transcriptions.create(
            model=MODEL, file=("talk.wav", wav), include=["logprobs"], response_format="verbose_json"
        )
    assert err.value.body["param"] == "include"


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_translations_in_every_format(server: RunningServer, two_sentences: tuple[bytes, float], fmt: str) -> None:
    wav, _ = two_sentences
    result = server.client().audio.translations.create(
        model="whisper-1", file=("talk.wav", wav), response_format=fmt, temperature=0.0
    )
    if fmt == "json":
        check_object("CreateTranslationResponseJson", result.model_dump(exclude_unset=True))
        assert isinstance(result.text, str)
    elif fmt == "verbose_json":
        body = result.model_dump(exclude_unset=True)
        check_object("CreateTranslationResponseVerboseJson", body)
        assert (body["task"], body["language"]) == ("translate", "english")
    elif fmt == "vtt":
        assert isinstance(result, str) and result.startswith("WEBVTT")
    else:
        assert isinstance(result, str)


def test_translation_of_an_unknown_model_is_404(server: RunningServer, two_sentences: tuple[bytes, float]) -> None:
    with pytest.raises(openai.NotFoundError):
        server.client().audio.translations.create(model="tts-1", file=("talk.wav", two_sentences[0]))


@pytest.mark.parametrize("field", ["keywords[]", "known_speaker_names[]"])
def test_fields_it_cannot_honour_are_refused(server: RunningServer, field: str) -> None:
    r = httpx.post(
        server.base_url + "/v1/audio/transcriptions",
        files={"file": ("a.wav", encode_whole("wav", silence(1.0, RATE)))},
        data={"model": MODEL, field: "GLM"},
        timeout=120,
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == field.removesuffix("[]")
