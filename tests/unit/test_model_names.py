"""Model names a request may give: the served one, OpenAI's aliases on their routes, none of them when off."""

from __future__ import annotations

import pytest

from glm4voice_api.errors import APIError
from glm4voice_api.pipeline.runtime import ServedModel
from glm4voice_api.serving.model_names import check_model


def _model(aliases: bool) -> ServedModel:
    return ServedModel("glm-4-voice-9b", "/x", 1024, True, aliases=aliases)


def test_served_name_and_aliases_on_their_routes() -> None:
    model = _model(True)
    check_model(model, "glm-4-voice-9b", "speech")
    check_model(model, "tts-1", "speech")
    check_model(model, "whisper-1", "translation")
    check_model(model, "gpt-realtime", "realtime")
    with pytest.raises(APIError) as err:
        check_model(model, "whisper-1", "chat")
    assert (err.value.status, err.value.param) == (404, "model")


def test_aliases_off() -> None:
    with pytest.raises(APIError) as err:
        check_model(_model(False), "tts-1", "speech")
    assert err.value.code == "model_not_found"


def test_realtime_session_update_may_name_an_alias() -> None:
    from glm4voice_api.protocol import realtime as wire
    from glm4voice_api.serving.realtime.config import SessionConfig

    config = SessionConfig(id="sess_1", model="glm-4-voice-9b", expires_at=0, model_aliases=("gpt-realtime",))
    assert config.patched(wire.SessionPatch.model_validate({"type": "realtime", "model": "gpt-realtime"}), None)
    with pytest.raises(APIError) as err:
        config.patched(wire.SessionPatch.model_validate({"type": "realtime", "model": "gpt-4o"}), None)
    assert err.value.param == "session.model"
