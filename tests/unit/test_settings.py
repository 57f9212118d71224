"""The settings tree: flags named by path, the environment with `__`, old names accepted, defaults resolved once."""

from __future__ import annotations

import pytest

from glm4voice_api.cli import build_parser, settings_from_args
from glm4voice_api.config import LEGACY_NAMES, Settings
from glm4voice_api.settings_tree import unknown_env_names


def _serve(*argv: str) -> Settings:
    return settings_from_args(build_parser().parse_args(["serve", *argv]))


def test_every_field_has_its_own_path_flag() -> None:
    settings = _serve(
        "--engine.max-model-len",
        "1024",
        "--admission.max-active",
        "3",
        "--tenant-limits.max-concurrent",
        "2",
        "--request-limits.max-tokens",
        "800",
        "--timeouts.drain-s",
        "5",
        "--speech-decoder.schedule",
        "10",
        "20",
        "--auth.api-keys",
        "sk-a",
        "sk-b",
        "--log.format",
        "text",
        "--no-web-demo",
    )
    assert settings.engine.max_model_len == 1024
    assert settings.admission.max_active == 3 and settings.tenant_limits.max_concurrent == 2
    assert settings.request_limits.max_tokens == 800 and settings.timeouts.drain_s == 5
    assert settings.speech_decoder.schedule == [10, 20] and settings.auth.api_keys == ["sk-a", "sk-b"]
    assert settings.log.format == "text" and not settings.web_demo


def test_help_is_grouped_and_lists_only_the_path_flags() -> None:
    text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    for group in ("engine:", "admission:", "tenant-limits:", "timeouts:", "speech-decoder:", "auth:"):
        assert group in text
    assert "--admission.max-active" in text and "--max-active-requests" not in text


def test_old_flags_and_environment_names_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLM4VOICE_LIMITS__MAX_TOKENS", "77")
    monkeypatch.setenv("GLM4VOICE_AUTH", "on")
    monkeypatch.setenv("GLM4VOICE_API_KEYS", "sk-a, sk-b")
    monkeypatch.setenv("GLM4VOICE_AUDIO__DECODER_SCHEDULE", "[10, 20]")
    settings = _serve("--max-model-len", "512", "--max-active-requests", "0", "--drain-timeout-s", "4")
    assert settings.request_limits.max_tokens == 77 and settings.auth.mode == "on"
    assert settings.auth.api_keys == ["sk-a", "sk-b"] and settings.speech_decoder.schedule == [10, 20]
    assert settings.engine.max_model_len == 512 and settings.admission.max_active == 0
    assert settings.timeouts.drain_s == 4


def test_new_environment_names_win_over_old_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLM4VOICE_LIMITS__MAX_TOKENS", "77")
    monkeypatch.setenv("GLM4VOICE_REQUEST_LIMITS__MAX_TOKENS", "88")
    assert Settings().request_limits.max_tokens == 88


def test_legacy_names_point_at_real_fields() -> None:
    settings = Settings().model_dump()
    for new in LEGACY_NAMES.values():
        node = settings
        for part in new.split("."):
            node = node[part]


def test_defaults_are_resolved_in_one_place() -> None:
    cpu = Settings().resolved(cuda=False, model_seq_length=4096)
    assert (cpu.engine.max_model_len, cpu.engine.max_num_seqs, cpu.engine.enforce_eager) == (4096, 8, True)
    assert cpu.engine.warmup_batch_sizes == [1, 2]
    assert (cpu.admission.max_active, cpu.admission.max_queued) == (8, 8)
    assert (cpu.audio_device, cpu.speech_decoder.dtype, cpu.speech_tokenizer.dtype) == ("cpu", "float32", "float32")
    gpu = Settings(admission={"max_active": 0}).resolved(cuda=True, model_seq_length=32768)
    assert (gpu.engine.max_model_len, gpu.engine.max_num_seqs, gpu.engine.enforce_eager) == (8192, 256, False)
    assert (gpu.admission.max_active, gpu.admission.max_queued) == (0, 0)  # 0: unlimited, no queue needed
    # vLLM graphs steps up to 128 tokens on a GPU (an operator's value is kept); no graphs on the CPU
    assert (gpu.engine.max_cudagraph_capture_size, cpu.engine.max_cudagraph_capture_size) == (128, None)
    wide = Settings(engine={"max_cudagraph_capture_size": 512}).resolved(cuda=True, model_seq_length=8192)
    assert wide.engine.max_cudagraph_capture_size == 512
    few = Settings(engine={"max_num_seqs": 16}).resolved(cuda=True, model_seq_length=8192)
    assert few.engine.max_cudagraph_capture_size == 32  # never above vLLM's own choice (2 x max_num_seqs)
    assert (gpu.audio_device, gpu.speech_decoder.dtype, gpu.speech_tokenizer.dtype) == ("cuda:0", "bfloat16", "float32")
    cpu_audio = Settings(audio_device="cpu").resolved(cuda=True, model_seq_length=8192)
    assert cpu_audio.speech_decoder.dtype == "float32"  # auto follows where the decoder runs
    half = Settings(speech_tokenizer={"dtype": "auto"})
    assert half.resolved(cuda=True, model_seq_length=8192).speech_tokenizer.dtype == "float16"
    assert half.resolved(cuda=False, model_seq_length=8192).speech_tokenizer.dtype == "float32"


def test_environment_names_that_are_no_setting_are_found() -> None:
    environ = {
        "GLM4VOICE_ENGINE__MAX_NUM_SEQS": "8",  # a setting
        "glm4voice_port": "1",  # names are case-insensitive
        "GLM4VOICE_ENGINE": "{}",  # a whole group as JSON
        "GLM4VOICE_LIMITS__MAX_TOKENS": "9",  # an old name
        "GLM4VOICE_CAPACITY__PROBE_S": "10",  # the bench's --variant rule: no server setting
        "GLM4VOICE_ENGINE__MAX_NUM_SEQ": "8",  # a typo
        "PATH": "/bin",
    }
    assert unknown_env_names(environ) == ["GLM4VOICE_CAPACITY__PROBE_S", "GLM4VOICE_ENGINE__MAX_NUM_SEQ"]
