"""One settings tree for the whole server (env prefix `GLM4VOICE_`, nested groups with `__`).

The CLI (`glm4voice_api.cli`) is generated from these same fields, so every setting has exactly one name, one
default and one help text. Nothing else in the code base reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

OFFICIAL_FOLDERS = {
    "llm": "glm-4-voice-9b",
    "speech_tokenizer": "glm-4-voice-tokenizer",
    "decoder": "glm-4-voice-decoder",
}


class EngineSettings(BaseModel):
    """vLLM engine flags, passed through to `AsyncEngineArgs`."""

    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel size.")
    pipeline_parallel_size: int = Field(1, ge=1, description="vLLM pipeline parallel size.")
    data_parallel_size: int = Field(1, ge=1, description="vLLM data parallel size.")
    gpu_memory_utilization: float = Field(
        0.75,
        gt=0,
        le=1,
        description="Fraction of GPU memory vLLM may use (the rest: speech tokenizer, decoder, graphs).",
    )
    max_model_len: int | None = Field(
        None, ge=64, description="Context length (prompt + reply). Default: 8192, as the official vLLM server."
    )
    max_num_seqs: int | None = Field(
        None, ge=1, description="Most sequences the engine batches. Default: 256 on GPU, 8 on CPU."
    )
    dtype: str = Field("auto", description="Weights/activation dtype: auto, bfloat16, float16, float32.")
    enforce_eager: bool | None = Field(None, description="Disable CUDA graphs/compilation. Default: on for CPU.")
    load_format: str = Field("auto", description="vLLM load format; 'dummy' gives random weights at full size.")
    seed: int = Field(0, description="Engine seed (per-request seeds still apply).")
    enable_prefix_caching: bool = Field(True, description="Reuse KV cache of shared prompt prefixes.")
    process: Literal["auto", "inproc", "separate"] = Field(
        "auto",
        description="Where vLLM's engine core runs. inproc: in the server process (one CUDA context shared with the "
        "speech decoder: their kernels interleave instead of time-slicing the GPU); separate: its own process "
        "(AsyncLLM). auto: separate (measured on an H100, bench/results: in-process the LLM made ~40% fewer tokens "
        "per second at 32 streams beside the decoder).",
    )
    quantization: str | None = Field(
        None, description="vLLM quantization of the LLM's weights, e.g. fp8 (Hopper); None: the checkpoint's dtype."
    )
    cpu_kv_cache_gib: int = Field(1, ge=1, description="KV cache size on CPU in GiB (VLLM_CPU_KVCACHE_SPACE).")
    warmup_batch_sizes: list[int] | None = Field(
        None,
        description="Batch sizes run once before the server reports ready. Default: powers of two up to "
        "max_num_seqs on GPU, [1, 2] on CPU.",
    )


class AudioModelSettings(BaseModel):
    """Where and how the speech tokenizer and decoder run (outside vLLM)."""

    audio_device: str = Field(
        "auto",
        description="Device of the speech tokenizer and decoder: auto, cpu, cuda, cuda:N, or all (a decoder on "
        "every GPU, for tensor/data-parallel engines; the tokenizer on cuda:0).",
    )
    tokenizer_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Speech tokenizer dtype (float32 reproduces the reference tokens exactly)."
    )
    tokenizer_max_batch: int = Field(16, ge=1, description="Most clips the tokenizer worker batches together.")
    tokenizer_max_wait_ms: float = Field(5.0, ge=0, description="How long the tokenizer worker waits to fill a batch.")
    decoder_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Speech decoder dtype. auto: bfloat16 on CUDA (2-3x the streams of float32 per GPU, "
        "bench/results), float32 on CPU (bf16 matmuls are slow there).",
    )
    decoder_chunking: Literal["adaptive", "fixed"] = Field(
        "fixed",
        description="How chunks are sized. adaptive: from each stream's buffered audio (small while the listener's "
        "buffer is thin, up to decoder_max_chunk once ahead; the scheduler also wakes a stream whose buffer nears "
        "its end); fixed: decoder_schedule, whatever the timing. fixed is the default: on an H100 it gave earlier "
        "first audio and lower p99 playable latency at 16 and 32 streams (bench/results/gpu_suite.json).",
    )
    decoder_first_chunk: int = Field(
        10, ge=6, description="Audio tokens in a reply's first chunk (adaptive): first audio after this many."
    )
    decoder_max_chunk: int = Field(160, ge=6, description="Most audio tokens in one chunk (adaptive).")
    decoder_lead_ms: float = Field(
        300.0,
        ge=0,
        description="Adaptive: a stream decodes whatever it has once its listener's buffer falls below this plus "
        "the expected decoder wait.",
    )
    decoder_schedule: list[int] = Field(
        [10, 20, 40, 80, 160],
        description="Fixed chunking: audio tokens per decoder chunk, in order; the last repeats.",
    )
    decoder_max_prompt_tokens: int | None = Field(
        100,
        ge=1,
        description="Earlier tokens (8 s at 100) given to the flow as context per chunk: bounds the cost of a chunk; "
        "None = the whole history, as the reference.",
    )
    decoder_max_batch: int = Field(
        32, ge=1, description="Most stream chunks decoded in one flow + HiFT pass (CUDA graphs: powers of two)."
    )
    decoder_cuda_graphs: bool = Field(
        True, description="On CUDA, run the flow's 10-step ODE as captured CUDA graphs (per shape bucket)."
    )


class LimitSettings(BaseModel):
    """Caps on what one request may ask for."""

    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest request body in bytes.")
    max_audio_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="Largest input audio file in bytes.")
    max_audio_seconds: float = Field(300.0, gt=0, description="Longest input audio in seconds.")
    default_max_tokens: int = Field(
        2048, ge=1, description="Reply token budget when a request gives none (capped by the context left)."
    )
    max_text_chars: int = Field(32768, ge=1, description="Most characters of text in one message.")
    max_tokens: int | None = Field(
        None, ge=0, description="Largest max_tokens a request may ask for (400 above it). 0/None: the context length."
    )
    # Admission: sized to what the engine and decoder serve in real time. Above max_active_requests requests wait
    # in a bounded queue; a full queue or an expired wait is a 429 with Retry-After (the openai SDK retries it).
    max_active_requests: int | None = Field(
        None, ge=0, description="Requests running model work at once (per replica). Default on a GPU: measured "
        "while serving (the streams this server keeps gap-free, up to max_num_seqs); on CPU: max_num_seqs. "
        "0: unlimited.",
    )  # fmt: skip
    max_queued_requests: int | None = Field(
        None, ge=0, description="Requests waiting for a slot; more are refused with 429. Default: max_active_requests."
    )
    max_queue_wait_s: float = Field(10.0, gt=0, description="Longest wait in the queue before a 429.")
    # Per-tenant limits (0/None = unlimited): concurrency is counted in this process (per replica); requests per
    # minute go through the store, so replicas sharing a Redis store share the limit.
    tenant_max_concurrent: int | None = Field(
        None, ge=0, description="Requests one tenant may have running or queued at once, per replica (429 above)."
    )
    tenant_requests_per_minute: int | None = Field(
        None, ge=0, description="Requests one tenant may start per fixed 60 s window, over all replicas (429 above)."
    )
    first_audio_timeout_s: float | None = Field(
        120.0, ge=0, description="Most seconds from the start of generation to the first audio (0/None: no limit)."
    )
    request_timeout_s: float | None = Field(
        600.0, ge=0, description="Most seconds from the start of generation to its end (0/None: no limit)."
    )


class Settings(BaseSettings):
    """glm4voice-api settings. Environment: GLM4VOICE_<NAME>, nested as GLM4VOICE_ENGINE__MAX_MODEL_LEN."""

    model_config = SettingsConfigDict(env_prefix="GLM4VOICE_", env_nested_delimiter="__", extra="ignore")

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    model_dir: Path | None = Field(
        None,
        description="Folder holding the three official folders glm-4-voice-9b, glm-4-voice-tokenizer and "
        "glm-4-voice-decoder. Without any model path the built-in tiny random-weight set is served.",
    )
    llm_path: Path | None = Field(None, description="The glm-4-voice-9b folder (overrides --model-dir).")
    speech_tokenizer_path: Path | None = Field(None, description="The glm-4-voice-tokenizer folder.")
    decoder_path: Path | None = Field(None, description="The glm-4-voice-decoder folder.")
    served_model_name: str = Field("glm-4-voice-9b", description="Model id clients use and /v1/models lists.")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "glm4voice-api",
        description="Where the built-in default checkpoints (and the default store) are created.",
    )
    interleave_constraint: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Enforce the 13-text/26-audio reply pattern in the sampler. auto: on for random weights "
        "(the real model emits the pattern by itself).",
    )
    log_level: str = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field(
        "json", description="Log lines as JSON objects (request id and tenant on each line of a request) or text."
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="On SIGTERM: how long in-flight requests may run on (new ones get 503) before they "
        "are aborted and the server exits.",
    )  # fmt: skip
    store: str | None = Field(
        None,
        description="Where audio ids, voices, API keys and rate-limit counters are kept: sqlite:///path (default "
        "<cache_dir>/store.sqlite3; one replica) or redis://host:port/db (shared by several replicas).",
    )
    auth: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Require 'Authorization: Bearer <key>' on /v1. auto: on as soon as any key is configured "
        "(--api-keys) or stored (`glm4voice-api keys create`), revoked ones included.",
    )
    # NoDecode: the environment gives a plain comma-separated list, not the JSON pydantic-settings expects.
    api_keys: Annotated[list[str], NoDecode] = Field(
        [], description="Static API keys (comma-separated in GLM4VOICE_API_KEYS), all for tenant 'default'."
    )
    auth_cache_seconds: float = Field(
        5.0, ge=0, description="How long a key lookup is cached in memory: a revoked key works at most this long."
    )
    protect_health_metrics: bool = Field(
        False, description="Require a key on /health, /health/ready and /metrics too (off: open for probes)."
    )
    audio_ttl_seconds: int = Field(3600, ge=60, description="How long an audio reply can be referred to by its id.")
    web_demo: bool = Field(True, description="Serve the browser demo (talk to the model) at / and /web/.")
    engine: EngineSettings = Field(default_factory=EngineSettings)
    audio: AudioModelSettings = Field(default_factory=AudioModelSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, list | tuple):
            return [k.strip() for k in items if isinstance(k, str) and k.strip()]
        return value

    def model_paths(self) -> dict[str, Path | None]:
        """The three checkpoint folders; None where the built-in default is to be used."""
        paths: dict[str, Path | None] = {}
        for key, folder in OFFICIAL_FOLDERS.items():
            explicit = getattr(self, f"{key}_path")
            paths[key] = explicit or (self.model_dir / folder if self.model_dir else None)
        return paths
