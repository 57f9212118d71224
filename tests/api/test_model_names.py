"""Names OpenAI clients already send: model aliases where the route fits (listed on /v1/models), voice names
checked (an unknown one is a 400 listing the accepted names), custom voices created only with `consent`."""

from __future__ import annotations

import httpx
import openai
import pytest

from glm4voice_api.serving.model_names import ALIASES
from tests.api.conftest import RunningServer
from tests.api.realtime_schema import check_object
from tests.api.test_transcription import WAV
from tests.api.test_voices import _sample

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]
MODEL = "glm-4-voice-9b"


def test_models_lists_the_aliases(server: RunningServer) -> None:
    listed = httpx.get(server.base_url + "/v1/models", timeout=30).json()
    check_object("ListModelsResponse", listed)
    ids = [m["id"] for m in listed["data"]]
    assert ids[0] == MODEL and set(ids[1:]) == set(ALIASES)
    card = server.client().models.retrieve("whisper-1")
    check_object("Model", card.model_dump())
    assert card.id == "whisper-1" and card.model_extra["root"] == MODEL


def test_aliases_work_where_the_route_fits(server: RunningServer) -> None:
    client = server.client()
    chat = client.chat.completions.create(
        model="gpt-4o-audio-preview", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert chat.model == MODEL
    for name in ("tts-1", "gpt-4o-mini-tts"):
        assert client.audio.speech.create(model=name, voice="alloy", input="Hi.", response_format="wav").content[
            :4
        ] == (b"RIFF")
    text = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", WAV))
    assert isinstance(text.text, str)


def test_an_alias_on_another_route_is_a_404_naming_the_route(server: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        server.client().chat.completions.create(model="tts-1", messages=[{"role": "user", "content": "Hi"}])
    assert err.value.body["param"] == "model" and "/v1/audio/speech" in err.value.body["message"]


def test_unknown_voice_is_a_400_listing_the_names(server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        server.client().audio.speech.create(model=MODEL, voice="allloy", input="Hi.")
    assert err.value.body["param"] == "voice" and "'alloy'" in err.value.body["message"]
    check_object("ErrorResponse", {"error": err.value.body})
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            modalities=["text", "audio"],
            audio={"voice": "robot", "format": "wav"},
        )
    assert err.value.body["param"] == "audio.voice" and "'cedar'" in err.value.body["message"]


@pytest.mark.parametrize(("consent", "code"), [(None, "missing_required_parameter"), ("  ", "invalid_value")])
def test_custom_voices_require_consent(server: RunningServer, consent: str | None, code: str) -> None:
    data = {"name": "Narrator"} | ({"consent": consent} if consent is not None else {})
    r = httpx.post(
        server.base_url + "/v1/audio/voices",
        data=data,
        files={"audio_sample": ("me.wav", _sample(), "audio/wav")},
        timeout=120,
    )
    assert r.status_code == 400
    assert (r.json()["error"]["param"], r.json()["error"]["code"]) == ("consent", code)
