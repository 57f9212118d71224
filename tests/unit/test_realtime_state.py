"""Realtime session state on its own: settings patches (GA and beta names), the conversation's prompts, context
fitting and truncation of an answer to what was heard. No server."""

from __future__ import annotations

from pathlib import Path

import pytest

from glm4voice_api.errors import APIError
from glm4voice_api.protocol.realtime import SessionPatch
from glm4voice_api.serving.realtime.config import SessionConfig
from glm4voice_api.serving.realtime.conversation import Conversation, Item
from glm4voice_api.text.tokenizer import GLM4Tokenizer


@pytest.fixture(scope="module")
def tok(tiny_llm_dir: Path) -> GLM4Tokenizer:
    return GLM4Tokenizer.from_dir(tiny_llm_dir)


def _config() -> SessionConfig:
    return SessionConfig(id="sess_1", model="glm-4-voice-9b", expires_at=0)


def test_ga_and_beta_patches_reach_the_same_settings() -> None:
    ga = _config().patched(
        SessionPatch.model_validate(
            {
                "type": "realtime",
                "output_modalities": ["audio"],
                "instructions": "Be brief.",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcmu"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
                    },
                    "output": {"format": {"type": "audio/pcma"}, "voice": "ash", "speed": 1.2},
                },
                "max_output_tokens": 200,
                "temperature": 0.6,
            }
        ),
        None,
    )
    beta = _config().patched(
        SessionPatch.model_validate(
            {
                "modalities": ["text", "audio"],
                "instructions": "Be brief.",
                "input_audio_format": "g711_ulaw",
                "output_audio_format": "g711_alaw",
                "voice": "ash",
                "speed": 1.2,
                "max_response_output_tokens": 200,
                "temperature": 0.6,
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
            }
        ),
        None,
    )
    assert ga == beta
    assert ga.vad_config().silence_duration_ms == 700 and ga.vad_config().prefix_padding_ms == 300
    rendered = beta.render(beta=True)
    assert rendered["input_audio_format"] == "g711_ulaw" and rendered["max_response_output_tokens"] == 200
    assert ga.render(beta=False)["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    off = ga.patched(SessionPatch.model_validate({"audio": {"input": {"turn_detection": None}}}), None)
    assert off.turn_detection is None and off.vad_config() is None
    kept = ga.patched(SessionPatch.model_validate({"instructions": "x"}), None)
    assert kept.turn_detection == ga.turn_detection  # absent: unchanged


@pytest.mark.parametrize(
    "patch, param",
    [
        ({"tools": [{"type": "function", "name": "f"}]}, "session.tools"),
        ({"audio": {"input": {"transcription": {"model": "whisper-1"}}}}, "session.audio.input.transcription"),
        ({"turn_detection": {"type": "server_vad", "idle_timeout_ms": 6000}}, "session.turn_detection.idle_timeout_ms"),
        ({"model": "gpt-realtime"}, "session.model"),
        ({"max_output_tokens": 900}, "session.max_output_tokens"),
    ],
)
def test_refused_patches_name_the_parameter_and_change_nothing(patch: dict, param: str) -> None:
    config = _config()
    with pytest.raises(APIError) as err:
        config.patched(SessionPatch.model_validate(patch), max_tokens_cap=800)
    assert err.value.param == param
    assert config == _config()


def _reply(tok: GLM4Tokenizer, groups: int) -> list[int]:
    """A reply in the model's pattern: 13 text ids then 26 audio ids, `groups` times."""
    ids = tok.ids
    text = tok.encode("one two three four five six seven eight nine ten eleven twelve thirteen")[:13]
    return [t for g in range(groups) for t in (*text, *(ids.audio_id(g * 26 + k) for k in range(26)))]


def test_truncate_keeps_the_heard_audio_tokens_and_the_text_before_them(tok: GLM4Tokenizer) -> None:
    conv = Conversation(tok)
    conv.add(Item(id="u1", role="user", content_type="input_audio", speech_tokens=(1, 2, 3), audio_ms=240))
    reply = _reply(tok, 3)
    conv.add(Item(id="a1", role="assistant", content_type="output_audio", reply_ids=list(reply), audio_ms=78 * 80))
    conv.truncate("a1", 0, 2500)  # 2.5 s heard: ceil(31.25) = 32 audio tokens
    kept = conv.get("a1").reply_ids
    assert kept == reply[: 13 + 26 + 13 + 6]  # group 1 whole, group 2's text and its first 6 audio tokens
    assert conv.get("a1").audio_ms == 2500
    assert conv.get("a1").transcript == tok.decode(reply[:13] * 2)
    conv.truncate("a1", 0, 0)
    assert conv.get("a1").reply_ids == []  # nothing heard: nothing said
    with pytest.raises(APIError):
        conv.truncate("a1", 0, 10)  # longer than what is left
    with pytest.raises(APIError):
        conv.truncate("u1", 0, 10)  # user audio is not truncated


def test_prompt_holds_exact_ids_and_fit_drops_the_oldest_turns(tok: GLM4Tokenizer) -> None:
    conv = Conversation(tok)
    reply = _reply(tok, 2)
    for n in range(3):
        conv.add(Item(id=f"u{n}", role="user", content_type="input_audio", speech_tokens=tuple(range(50))))
        conv.add(Item(id=f"a{n}", role="assistant", content_type="output_audio", reply_ids=list(reply)))
    conv.add(Item(id="u3", role="user", content_type="input_text", text="And now?"))
    prompt, dropped = conv.fit("", max_len=10_000, reserve=78, allow_drop=True)
    assert not dropped
    ids = prompt.token_ids
    assert any(ids[i : i + len(reply)] == reply for i in range(len(ids)))  # the answer's ids, exactly
    assert prompt.audio_tokens == 3 * 50 + 3 * 52
    small, dropped = conv.fit("", max_len=len(ids) - 100 + 78, reserve=78, allow_drop=True)
    assert [i.id for i in dropped] == ["u0", "a0"]  # one whole turn, so the prompt starts with a user turn
    assert len(small.token_ids) < len(ids)
    with pytest.raises(APIError) as err:
        conv.fit("", max_len=len(ids) - 100 + 78, reserve=78, allow_drop=False)
    assert err.value.code == "context_length_exceeded"
    conv.add(Item(id="a3", role="assistant", content_type="output_text", text="Fine."))
    with pytest.raises(APIError) as err:
        conv.fit("", max_len=10_000, reserve=78, allow_drop=True)
    assert err.value.code == "no_user_input"
