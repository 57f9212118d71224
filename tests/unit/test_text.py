"""GLM-4 tokenizer and the exact GLM-4-Voice prompt ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.text.prompt import (
    AUDIO_INPUT_SYSTEM_PROMPT,
    TEXT_INPUT_SYSTEM_PROMPT,
    AssistantMessage,
    AudioPart,
    PromptBuilder,
    ReplySplitter,
    TextPart,
    UserMessage,
)
from glm4voice_api.text.tokenizer import GLM4Tokenizer


@pytest.fixture(scope="module")
def tok(tiny_llm_dir: Path) -> GLM4Tokenizer:
    return GLM4Tokenizer.from_dir(tiny_llm_dir)


def test_special_ids_match_the_spec(tok: GLM4Tokenizer) -> None:
    ids = tok.ids
    assert (ids.endoftext, ids.gmask, ids.sop, ids.system, ids.user, ids.assistant, ids.observation) == (
        151329,
        151331,
        151333,
        151335,
        151336,
        151337,
        151338,
    )
    assert (ids.begin_of_audio, ids.end_of_audio, ids.audio_0, ids.audio_count) == (151343, 151344, 152353, 16384)
    assert ids.num_valid == 168737  # 168737..168959 are padding rows
    assert ids.stop_ids == (151329, 151336, 151338)


def test_ids_are_read_from_the_files_not_hard_coded(tiny_llm_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_llm_dir / "tokenizer.model", tmp_path)
    config = json.loads((tiny_llm_dir / "tokenizer_config.json").read_text())
    moved = {}
    for key, entry in config["added_tokens_decoder"].items():
        i = int(key)
        moved[str(i + 7 if i >= 152353 else i)] = entry
    config["added_tokens_decoder"] = moved
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert GLM4Tokenizer.from_dir(tmp_path).ids.audio_0 == 152360


def test_missing_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFormatError, match="tokenizer.model"):
        GLM4Tokenizer.from_dir(tmp_path)


def test_roundtrip_and_no_special_injection(tok: GLM4Tokenizer) -> None:
    text = "Hello <|user|> 你好, wörld! 123"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.ids.user not in ids


def test_incremental_decoder_never_splits_a_character(tok: GLM4Tokenizer) -> None:
    ids = tok.encode("日本語テキスト")
    decoder = tok.incremental_decoder()
    pieces = [decoder.feed([i]) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == "日本語テキスト"
    assert all("\ufffd" not in p for p in pieces)


def test_two_turn_audio_text_prompt_exact_ids(tok: GLM4Tokenizer) -> None:
    builder = PromptBuilder(tok)
    audio = (5, 0, 16383, 42)
    reply = [*tok.encode(" Sure"), 152353 + 7, 152353 + 8]
    turns = [
        UserMessage(parts=(AudioPart(audio),)),
        AssistantMessage(token_ids=tuple(reply)),
        UserMessage(parts=(TextPart("And tomorrow?"),)),
    ]
    prompt = builder.build(turns)
    enc = tok.encode
    expected = [
        151331,
        151333,  # [gMASK] <sop>
        151335,
        *enc("\n" + AUDIO_INPUT_SYSTEM_PROMPT),  # <|system|>\n{speech system prompt, trailing space}
        151336,
        *enc("\n"),
        151343,
        152358,
        152353,
        168736,
        152395,
        151344,  # <|user|>\n<|begin_of_audio|>..
        151337,
        *enc("streaming_transcription\n"),
        *reply,  # the earlier reply's exact ids
        151336,
        *enc("\nAnd tomorrow?"),
        151337,
        *enc("streaming_transcription\n"),
    ]
    assert prompt.token_ids == expected
    assert prompt.audio_tokens == 4 + 2
    assert prompt.input_mode == "audio"
    # The same ids spell out the seed's string template.
    assert tok.decode(prompt.token_ids) == (
        "[gMASK]<sop><|system|>\n" + AUDIO_INPUT_SYSTEM_PROMPT + "<|user|>\n<|begin_of_audio|><|audio_5|><|audio_0|>"
        "<|audio_16383|><|audio_42|><|end_of_audio|><|assistant|>streaming_transcription\n Sure<|audio_7|>"
        "<|audio_8|><|user|>\nAnd tomorrow?<|assistant|>streaming_transcription\n"
    )


def test_text_prompt_uses_the_text_system_prompt(tok: GLM4Tokenizer) -> None:
    prompt = PromptBuilder(tok).build([UserMessage(parts=(TextPart("Hi"),))])
    assert tok.decode(prompt.token_ids) == (
        "[gMASK]<sop><|system|>\n" + TEXT_INPUT_SYSTEM_PROMPT + "<|user|>\nHi<|assistant|>streaming_transcription\n"
    )
    assert prompt.audio_tokens == 0


def test_splitter_separates_text_audio_and_drops_stop(tok: GLM4Tokenizer) -> None:
    splitter = ReplySplitter(tok)
    text, audio = splitter.feed([10, 11, 152353, 168736, 151336])
    assert text == [10, 11]
    assert audio == [0, 16383]
    assert splitter.reply.all_ids == [10, 11, 152353, 168736]
