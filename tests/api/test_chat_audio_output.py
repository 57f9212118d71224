"""Spoken chat through the openai SDK: audio replies in every format, streaming pcm16, multi-turn by audio id."""

from __future__ import annotations

import base64
import io

import av
import numpy as np
import openai
import pytest

from glm4voice_api.text.prompt import ASSISTANT_METADATA
from glm4voice_api.text.tokenizer import GLM4Tokenizer
from tests.api.conftest import RunningServer, wait_all_freed
from tests.api.conftest import delta_audio as _delta_audio

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"
TOKEN_SECONDS = 0.08  # one speech token is 80 ms


def _decode(data: bytes, fmt: str) -> tuple[int, float]:
    """(sample rate, seconds) of an encoded reply, decoded with PyAV in the asked format."""
    if fmt == "pcm16":
        return 24000, len(data) / 2 / 24000
    container = av.open(io.BytesIO(data), format={"opus": "ogg", "aac": "aac"}.get(fmt, fmt))
    assert (
        container.format.name.split(",")[0]
        in {"wav": "wav", "mp3": "mp3", "flac": "flac", "opus": "ogg", "aac": "aac"}[fmt]
    )
    stream = container.streams.audio[0]
    n = sum(f.samples for f in container.decode(stream))
    return stream.rate, n / stream.rate


@pytest.mark.parametrize(
    ("fmt", "rate"),
    [("wav", 24000), ("mp3", 24000), ("flac", 24000), ("opus", 48000), ("aac", 24000), ("pcm16", 24000)],
)
def test_non_streaming_audio_reply_in_every_format(server: RunningServer, fmt: str, rate: int) -> None:
    reply = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say something"}],
        max_tokens=78,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": fmt},
    )
    message = reply.choices[0].message
    assert message.content is None
    assert message.audio.id.startswith("audio_")
    assert message.audio.transcript
    assert message.audio.expires_at > 0
    got_rate, seconds = _decode(base64.b64decode(message.audio.data), fmt)
    assert got_rate == rate
    audio_tokens = reply.usage.completion_tokens_details.audio_tokens
    assert audio_tokens == 52
    assert seconds == pytest.approx(audio_tokens * TOKEN_SECONDS, abs=0.12)


def test_streaming_audio_arrives_before_the_reply_ends(server: RunningServer) -> None:
    observed = server.metric("glm4voice_first_audio_seconds_count")
    started = server.metric("glm4voice_reply_start_seconds_count")
    stream = server.client().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me more"}],
        max_tokens=195,
        stream=True,
        modalities=["text", "audio"],
        audio={"voice": "verse", "format": "pcm16"},
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    audio = [(i, a) for i, c in enumerate(chunks) if c.choices and (a := _delta_audio(c.choices[0].delta))]
    data_at = [i for i, a in audio if "data" in a]
    transcript_at = [i for i, a in audio if "transcript" in a]
    assert audio[0][1]["id"].startswith("audio_")
    assert data_at and transcript_at
    assert data_at[0] < transcript_at[-1]  # audio started while the transcript was still coming
    assert "expires_at" in audio[-1][1]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    pcm = b"".join(base64.b64decode(a["data"]) for _, a in audio if "data" in a)
    samples = np.frombuffer(pcm, dtype="<i2")
    audio_tokens = chunks[-1].usage.completion_tokens_details.audio_tokens
    assert audio_tokens == 130
    assert len(samples) / 24000 == pytest.approx(audio_tokens * TOKEN_SECONDS, abs=0.12)
    assert np.abs(samples).max() > 0
    assert server.metric("glm4voice_first_audio_seconds_count") == observed + 1
    assert server.metric("glm4voice_reply_start_seconds_count") == started + 1


def test_stream_with_other_format_is_openai_400(server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            stream=True,
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "mp3"},
        )
    assert err.value.body["param"] == "audio.format"
    assert "Supported values are: 'pcm16'" in err.value.body["message"]


def test_audio_modality_needs_audio_params(server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], modalities=["text", "audio"]
        )
    assert err.value.body["param"] == "audio"


def test_second_turn_by_audio_id_holds_the_stored_tokens(server: RunningServer, tiny_llm_dir) -> None:
    client = server.client()
    first_messages = [{"role": "user", "content": "First question"}]
    first = client.chat.completions.create(
        model=MODEL,
        messages=first_messages,
        max_tokens=39,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        extra_body={"return_token_ids": True},
    )
    first_extra = first.model_extra
    reply_ids = first.choices[0].model_extra["token_ids"]
    assert len(reply_ids) == 39
    second = client.chat.completions.create(
        model=MODEL,
        max_tokens=5,
        extra_body={"return_token_ids": True},
        messages=[
            *first_messages,
            {"role": "assistant", "audio": {"id": first.choices[0].message.audio.id}},
            {"role": "user", "content": "And then?"},
        ],
    )
    tok = GLM4Tokenizer.from_dir(tiny_llm_dir)
    ids = tok.ids
    expected = (
        first_extra["prompt_token_ids"]
        + reply_ids
        + [ids.user, *tok.encode("\nAnd then?"), ids.assistant, *tok.encode(ASSISTANT_METADATA)]
    )
    assert second.model_extra["prompt_token_ids"] == expected


def test_unknown_audio_id_is_a_404_naming_it(server: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        server.client().chat.completions.create(
            model=MODEL,
            max_tokens=5,
            messages=[
                {"role": "user", "content": "a"},
                {"role": "assistant", "audio": {"id": "audio_nope"}},
                {"role": "user", "content": "b"},
            ],
        )
    assert "audio_nope" in err.value.body["message"]
    assert (err.value.body["param"], err.value.body["code"]) == ("messages[1].audio.id", "audio_not_found")


def test_disconnect_mid_audio_frees_engine_request_and_decoder_session(server: RunningServer) -> None:

    aborted = server.metric("glm4voice_engine_aborted_requests_total")
    stream = server.client(timeout=60).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "A long answer please"}],
        max_tokens=780,
        stream=True,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "pcm16"},
    )
    data_chunks = 0
    for chunk in stream:
        if chunk.choices and "data" in _delta_audio(chunk.choices[0].delta):
            data_chunks += 1
            if data_chunks >= 2:
                break
    stream.close()
    wait_all_freed(server, timeout_s=15)
    assert server.metric("glm4voice_engine_aborted_requests_total") == aborted + 1
