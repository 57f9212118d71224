"""One settings tree for the whole server: environment `GLM4VOICE_*` (groups nested with `__`) and `serve` flags.

The groups follow the README's sections (`engine`, `speech_tokenizer`, `speech_decoder`, `request_limits`, ...). A field's
flag is its path (`--engine.max-model-len`, env `GLM4VOICE_ENGINE__MAX_MODEL_LEN`), so two groups can share a name.
0 means "unlimited" (or "off") where a limit can be lifted; None "derive the default", in one place: `Settings.resolved`.
Nothing else reads their values (`serve` warns of names that are none). Old names are still accepted (`LEGACY_NAMES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

OFFICIAL_FOLDERS = {
    "llm": "glm-4-voice-9b",
    "speech_tokenizer": "glm-4-voice-tokenizer",
    "decoder": "glm-4-voice-decoder",
}
DEFAULT_MAX_MODEL_LEN = 8192  # the official vLLM server's context for GLM-4-Voice


class EngineSettings(BaseModel):
    """vLLM engine: its own flags, passed through to `AsyncEngineArgs`."""

    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel size.")
    pipeline_parallel_size: int = Field(1, ge=1, description="vLLM pipeline parallel size.")
    data_parallel_size: int = Field(1, ge=1, description="vLLM data parallel size.")
    gpu_memory_utilization: float = Field(
        0.75, gt=0, le=1, description="GPU memory fraction vLLM may use (the rest: speech tokenizer, decoder, graphs)."
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
        description="Where vLLM's engine core runs. inproc: in the server process (one CUDA context with the decoder); "
        "separate: its own process (AsyncLLM). auto: separate (inproc: slower token supply, GIL; bench/results).",
    )
    quantization: str | None = Field(None, description="Weight quantization: fp8 (an option; test_fp8_fidelity.py).")
    max_cudagraph_capture_size: int | None = Field(
        None, ge=1, description="Largest step vLLM graphs on CUDA. Default: 128 (512: ready 2.5 s later, H100)."
    )
    cpu_kv_cache_gib: int = Field(1, ge=1, description="KV cache size on CPU in GiB (VLLM_CPU_KVCACHE_SPACE).")
    warmup_beside_audio: bool = Field(True, description="Warm up beside the decoder host's start (ready 103 vs 131 s).")
    warmup_batch_sizes: list[int] | None = Field(
        None, description="Batch sizes run before ready. Default: powers of two to max_num_seqs on GPU, [1, 2] on CPU."
    )

    def resolved(self, *, cuda: bool, model_seq_length: int) -> EngineSettings:
        """The same settings with every default that depends on the machine or the model filled in."""
        max_num_seqs = self.max_num_seqs or (256 if cuda else 8)
        warmup = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= max_num_seqs] if cuda else [1, 2]
        return self.model_copy(
            update={
                "max_model_len": self.max_model_len or min(DEFAULT_MAX_MODEL_LEN, model_seq_length),
                "max_num_seqs": max_num_seqs,
                "enforce_eager": self.enforce_eager if self.enforce_eager is not None else not cuda,
                "max_cudagraph_capture_size": self.max_cudagraph_capture_size
                or (min(128, 2 * max_num_seqs) if cuda else None),
                "warmup_batch_sizes": self.warmup_batch_sizes if self.warmup_batch_sizes is not None else warmup,
            }
        )


class SpeechTokenizerSettings(BaseModel):
    """Speech tokenizer (audio in -> speech tokens): its precision and how its worker thread batches requests."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32",
        description="Speech tokenizer dtype; the VQ codebook and distances stay float32. float32: the reference tokens "
        "exactly. auto: float16 on CUDA (99.4 percent of them, no faster first audio measured; bench/results), else float32.",
    )
    own_stream: bool = Field(True, description="In vLLM's process (in_engine): a high-priority CUDA stream of its own.")
    max_batch: int = Field(16, ge=1, description="Most clips the tokenizer worker batches together.")
    max_wait_ms: float = Field(0.0, ge=0, le=1000, description="ms to wait to fill a batch (0: none; queued batch).")
    in_engine: bool | None = Field(
        None, description="Tokenize in vLLM's model process, in the decoder's host. Default: where the decoder is."
    )


class SpeechDecoderSettings(BaseModel):
    """Speech decoder (speech tokens -> audio out): precision, chunk schedule, context bound and batching."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Decoder dtype. auto: bfloat16 on CUDA (2-3x float32's streams), float32 on CPU (faster)."
    )
    schedule: list[int] = Field(
        [10, 8, 8, 26, 52, 104, 156],
        description="Audio tokens per chunk; the last repeats. 10: first audio early; 8, 8: the first 26-token block's "
        "rest (16 at once stuttered under overload); then chunks end where blocks end; longer chunks cost less.",
    )
    max_prompt_tokens: int = Field(
        100, ge=0, description="Earlier tokens (8 s at 100) the flow gets as context: bounds a chunk's cost; 0: all."
    )
    chunking: Literal["adaptive", "fixed"] = Field(
        "fixed", description="fixed: the schedule; adaptive: sized from buffer and token supply (measured worse)."
    )
    first_chunk: int = Field(10, ge=6, description="Adaptive: audio tokens in a reply's first chunk.")
    first_rank_ms: float = Field(-1000.0, description="Fixed: a first chunk ranks like a stream with this audio left.")
    first_company_ms: float = Field(
        0.0, ge=0, description="Fixed: a first chunk's pass takes a started stream's chunk below this buffer (0: all)."
    )
    max_chunk: int = Field(160, ge=6, description="Adaptive: most audio tokens in one chunk.")
    lead_ms: float = Field(300.0, ge=0, description="Adaptive, hold: decode once the buffer is below this + the wait.")
    hold: bool = Field(
        False, description="Deadline batching: a due chunk waits for a fuller pass while its buffer allows (no faster)."
    )
    max_batch: int = Field(32, ge=1, description="Most stream chunks in one decoder pass.")
    graph_batches: list[Annotated[int, Field(ge=1)]] = Field(
        [1, 2, 4, 8, 16, 32], min_length=1, description="Rows of the flow's CUDA graphs: a pass is padded up to one."
    )
    max_pass_ms: float = Field(
        0.0,
        ge=0,
        description="Rows join a decoder pass only while its expected length (fitted from measured passes) stays within "
        "this. 0 (default): max_batch only; a 250 ms bound cost more than it saved (bench/results).",
    )
    preempt: bool = Field(False, description="Short passes between a long pass's ODE steps (off: measured worse).")
    ode_steps: int = Field(
        5,
        ge=1,
        description="Euler steps of the flow's ODE. 5 (default): half the reference's work (bench/results); 10: the "
        "reference's. The mel moves 7.5 percent (relative RMS) from 10 steps' (noise: 126; tests/models/test_flow.py).",
    )
    cuda_graphs: bool = Field(True, description="On CUDA, run the flow's ODE as CUDA graphs (per shape bucket).")
    compile_outside_graphs: bool = Field(False, description="On CUDA, compile HiFT and the flow encoder (no faster).")
    bucket_shapes: bool = Field(False, description="Pad HiFT and the regulator to few frame counts (unmeasured).")
    hift_graphs: bool = Field(
        False,
        description="On CUDA, HiFT as CUDA graphs for passes of <= hift_graph_rows rows and hift_graph_frames frames. "
        "Off: a lone first pass was 7-12 ms shorter on two H100s, no shorter on two others (GPU.md sessions 23-24).",
    )
    hift_graph_rows: int = Field(1, ge=1, description="Most rows a graphed HiFT pass has (larger passes: eager).")
    hift_graph_frames: int = Field(256, ge=64, description="Most mel frames of a graphed HiFT row (26 tokens).")
    flow_front_graphs: bool = Field(False, description="With cuda_graphs: the flow's encoder as graphs (no faster).")
    solo_first_pass: int = Field(
        4, ge=0, description="In vLLM's process: while <= this many streams are open, a first pass holds the LLM."
    )
    solo_first_share: float = Field(0.0, ge=0, le=1, description="Above: hold it <= this time share (worse).")
    green_sms: int = Field(
        0, ge=0, description="In vLLM's process: SMs kept for the decoder (green contexts); 0: off (64: worse)."
    )
    compile_blocks: bool = Field(
        True,
        description="With cuda_graphs, torch.compile the flow estimator's blocks (fused kernels: 1.35x the decoder's "
        "speed on an H200, bench/results). Compiled at start (~30 s, beside vLLM's), cached under cache_dir/inductor.",
    )
    in_engine: bool | None = Field(
        None,
        description="Decode in vLLM's model process: one CUDA context with the LLM (pipeline/decoder_host.py). Default: "
        "on with one GPU and one engine process (faster on an H100, bench/results), else off.",
    )


class RequestLimits(BaseModel):
    """Caps on what one request may ask for (sizes and token budgets)."""

    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest request body in bytes.")
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest request head (request line and headers) in bytes; larger: 400."
    )
    max_connections: int = Field(
        2048, ge=0, description="Open connections (and requests) per process; beyond it new requests get 503; 0: none."
    )
    max_audio_bytes: int = Field(25 * 1024 * 1024, ge=1024, description="Largest input audio file in bytes.")
    max_audio_seconds: float = Field(
        300.0,
        gt=0,
        description="Longest input audio in seconds, all of a request's audio parts together (a WAV header declaring "
        "more is refused before decoding; speech tokens are checked against the context before tokenizing).",
    )
    max_text_chars: int = Field(32768, ge=1, description="Most characters of text in one message.")
    max_tokens: int = Field(
        0, ge=0, description="Largest max_tokens a request may ask for (400 above it). 0: the context length."
    )
    default_max_tokens: int = Field(
        2048, ge=1, description="Reply token budget when a request gives none (capped by the context left)."
    )


class AdmissionSettings(BaseModel):
    """Global admission: requests running model work at once, and the bounded queue in front of them.

    Sized to what the engine and decoder serve in real time; a full queue or an expired wait is a 429 with
    Retry-After (the openai SDK retries it).
    """

    max_active: int | None = Field(
        None,
        ge=0,
        description="Requests running model work at once (per replica). Default: the engine's max_num_seqs; on a GPU "
        "measured while serving instead (see measured). 0: unlimited.",
    )
    measured: bool | None = Field(
        None,
        description="Capacity control: the active limit follows what the server measures (gaps of settled streams, "
        "near misses, the LLM's token supply), between 1 and max_num_seqs. Default: on for a GPU server when "
        "max_active is unset.",
    )
    max_queued: int | None = Field(
        None, ge=0, description="Requests waiting for a slot; more are refused with 429. Default: max_active."
    )
    max_queue_wait_s: float = Field(10.0, gt=0, description="Longest wait in the queue before a 429.")


class TenantLimitSettings(BaseModel):
    """Per-tenant limits (0 = unlimited).

    Concurrency is counted in this process (per replica); requests per minute go through the store, so replicas
    sharing a Redis store share the limit.
    """

    max_concurrent: int = Field(
        0, ge=0, description="Requests one tenant may have running or queued at once, per replica (429 above)."
    )
    requests_per_minute: int = Field(
        0, ge=0, description="Requests one tenant may start per fixed 60 s window, over all replicas (429 above)."
    )
    max_voices: int = Field(
        100, ge=0, description="Custom voices one tenant may keep in the store (a 400 when creating one more)."
    )


class TimeoutSettings(BaseModel):
    """Time limits of a generation (counted from its start; 0 = no limit) and of the drain on shutdown."""

    first_audio_s: float = Field(120.0, ge=0, description="Most seconds from the start of generation to first audio.")
    request_s: float = Field(
        600.0, ge=0, description="Most seconds from the start of a request's work (audio in, generation) to its end."
    )
    header_s: float = Field(
        10.0, gt=0, description="Most seconds a client may take to send a request's head; then the connection closes."
    )
    body_idle_s: float = Field(
        30.0, gt=0, description="Most seconds between two parts of a request body; then a 408 and the request ends."
    )
    keep_alive_s: float = Field(5.0, gt=0, description="An idle keep-alive connection is closed after this long.")
    drain_s: float = Field(
        30.0, ge=0, description="On SIGTERM: how long in-flight requests may run on (new: 503) before they are aborted."
    )


class RealtimeSettings(BaseModel):
    """The Realtime API (WebSocket /v1/realtime): sessions, their time limits and message caps (0 = unlimited)."""

    max_sessions: int = Field(256, ge=0, description="Realtime sessions open at once (per replica); more are refused.")
    max_session_s: float = Field(3600.0, gt=0, description="Longest Realtime session in seconds (as OpenAI).")
    idle_timeout_s: float = Field(
        600.0, ge=0, description="A Realtime session with no client event (and no answer running) this long is closed."
    )
    max_event_bytes: int = Field(
        15 * 1024 * 1024, ge=1024, description="Largest Realtime client event (one WebSocket message) in bytes."
    )
    max_buffer_s: float = Field(300.0, gt=0, description="Most seconds of audio the Realtime input buffer holds.")
    client_secret_max_ttl_s: int = Field(
        7200, ge=10, description="Longest lifetime of a Realtime client secret (ek_...) in seconds."
    )


class AuthSettings(BaseModel):
    """API keys: who may call /v1 (each key belongs to one tenant)."""

    mode: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Require 'Authorization: Bearer <key>' on /v1. auto: on as soon as any key is configured "
        "(--auth.api-keys) or stored (`glm4voice-api keys create`), revoked ones included.",
    )
    # NoDecode: the environment gives a plain comma-separated list, not the JSON pydantic-settings expects.
    api_keys: Annotated[list[str], NoDecode] = Field(
        [], description="Static API keys (comma-separated in GLM4VOICE_AUTH__API_KEYS), all for tenant 'default'."
    )
    cache_seconds: float = Field(
        5.0, ge=0, description="How long a key lookup is cached in memory: a revoked key works at most this long."
    )
    metrics_tenant_names: bool = Field(
        False,
        description="Name tenants in /metrics labels. Off: every tenant but default appears as t-<first 12 hex of "
        "its name's SHA-256>, so an open /metrics does not list who uses the server.",
    )
    protect_health_metrics: bool = Field(
        False, description="Require a key on /health, /health/ready and /metrics too (off: open for probes)."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, list | tuple):
            return [k.strip() for k in items if isinstance(k, str) and k.strip()]
        return value


class LogSettings(BaseModel):
    """Log lines: level and format."""

    level: str = Field("info", description="Log level.")
    format: Literal["json", "text"] = Field(
        "json", description="Log lines as JSON objects (request id and tenant on each line of a request) or text."
    )
    slow_loop_s: float = Field(0.5, ge=0, description="Log the event loop's stack when blocked this long (s); 0: off.")


LEGACY_NAMES: dict[str, str] = {
    # old path (flat flag = its last part) -> new path
    **{
        f"limits.{old}": new
        for old, new in {
            "max_request_bytes": "request_limits.max_body_bytes",
            "max_audio_bytes": "request_limits.max_audio_bytes",
            "max_audio_seconds": "request_limits.max_audio_seconds",
            "max_text_chars": "request_limits.max_text_chars",
            "max_tokens": "request_limits.max_tokens",
            "default_max_tokens": "request_limits.default_max_tokens",
            "max_active_requests": "admission.max_active",
            "max_queued_requests": "admission.max_queued",
            "max_queue_wait_s": "admission.max_queue_wait_s",
            "tenant_max_concurrent": "tenant_limits.max_concurrent",
            "tenant_requests_per_minute": "tenant_limits.requests_per_minute",
            "first_audio_timeout_s": "timeouts.first_audio_s",
            "request_timeout_s": "timeouts.request_s",
        }.items()
    },
    **{
        f"audio.{old}": new
        for old, new in {
            "audio_device": "audio_device",
            "tokenizer_dtype": "speech_tokenizer.dtype",
            "tokenizer_max_batch": "speech_tokenizer.max_batch",
            "tokenizer_max_wait_ms": "speech_tokenizer.max_wait_ms",
            "decoder_dtype": "speech_decoder.dtype",
            "decoder_schedule": "speech_decoder.schedule",
            "decoder_max_prompt_tokens": "speech_decoder.max_prompt_tokens",
            "decoder_max_batch": "speech_decoder.max_batch",
            "decoder_cuda_graphs": "speech_decoder.cuda_graphs",
        }.items()
    },
    **{f"engine.{name}": f"engine.{name}" for name in EngineSettings.model_fields},
    "drain_timeout_s": "timeouts.drain_s",
    "auth": "auth.mode",
    "api_keys": "auth.api_keys",
    "auth_cache_seconds": "auth.cache_seconds",
    "protect_health_metrics": "auth.protect_health_metrics",
    "log_level": "log.level",
    "log_format": "log.format",
}
"""Names from before the groups: still read from the environment (`GLM4VOICE_LIMITS__MAX_TOKENS`) and accepted as
flags (`--max-tokens`, hidden from --help), so existing deployments and scripts keep working."""


class _EnvWithLegacyNames(EnvSettingsSource):
    """The environment source, with the old variable names renamed to their new paths first."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = dict(super()._load_env_vars())
        prefix = self.env_prefix.lower()
        for old, new in LEGACY_NAMES.items():
            old_key = prefix + old.replace(".", "__")
            new_key = prefix + new.replace(".", "__")
            if old_key in env and old_key != new_key:
                value = env.pop(old_key)
                env.setdefault(new_key, value)
        return env


class Settings(BaseSettings):
    """The server itself. Every flag is a setting's path and has an environment variable GLM4VOICE_<PATH>, with __
    between group and field: --engine.max-model-len = GLM4VOICE_ENGINE__MAX_MODEL_LEN. Flags override the
    environment, which overrides the defaults."""

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
    model_aliases: bool = Field(
        True,
        description="Also answer OpenAI's model names where the route fits (gpt-4o-audio-preview and "
        "gpt-4o-mini-audio-preview for chat; gpt-4o-mini-tts, tts-1, tts-1-hd for speech; whisper-1, "
        "gpt-4o-transcribe, gpt-4o-mini-transcribe for transcriptions and translations; gpt-realtime), and list "
        "them on /v1/models.",
    )
    cache_dir: Path = Field(Path.home() / ".cache" / "glm4voice-api", description="Built-in checkpoints, store.")
    audio_device: str = Field(
        "auto",
        description="Device of the speech tokenizer and decoder: auto (cuda:0 if there is a GPU, else cpu), cpu, "
        "cuda, cuda:N, or all (a decoder on every GPU, for tensor/data-parallel engines; the tokenizer on cuda:0).",
    )
    interleave_constraint: Literal["auto", "on", "off"] = Field(
        "auto", description="Enforce the 13-text/26-audio reply pattern in sampling. auto: on for random weights only."
    )
    store: str | None = Field(
        None,
        description="Where audio ids, voices, API keys and rate-limit counters are kept: sqlite:///path (default "
        "<cache_dir>/store.sqlite3; one replica) or redis://host:port/db (shared by several replicas).",
    )
    audio_ttl_seconds: int = Field(3600, ge=60, description="How long an audio reply can be referred to by its id.")
    switch_interval_ms: float = Field(5.0, gt=0, le=100, description="Python's thread switch interval (GIL), ms.")
    web_demo: bool = Field(True, description="Serve the browser demo (talk to the model) at / and /web/.")
    engine: EngineSettings = Field(default_factory=EngineSettings)
    speech_tokenizer: SpeechTokenizerSettings = Field(default_factory=SpeechTokenizerSettings)
    speech_decoder: SpeechDecoderSettings = Field(default_factory=SpeechDecoderSettings)
    request_limits: RequestLimits = Field(default_factory=RequestLimits)
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    tenant_limits: TenantLimitSettings = Field(default_factory=TenantLimitSettings)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    realtime: RealtimeSettings = Field(default_factory=RealtimeSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _EnvWithLegacyNames(settings_cls), dotenv_settings, file_secret_settings

    def model_paths(self) -> dict[str, Path | None]:
        """The three checkpoint folders; None where the built-in default is to be used."""
        paths: dict[str, Path | None] = {}
        for key, folder in OFFICIAL_FOLDERS.items():
            explicit = getattr(self, f"{key}_path")
            paths[key] = explicit or (self.model_dir / folder if self.model_dir else None)
        return paths

    def _host_fits(self, device: str) -> bool:
        """Whether the decoder's host in vLLM's model process can run: one engine process, one decoder."""
        e = self.engine
        one = e.tensor_parallel_size * e.pipeline_parallel_size * e.data_parallel_size == 1
        return e.process != "inproc" and one and device != "all"

    @model_validator(mode="after")
    def _decoder_host_fits(self) -> Settings:
        """The host in vLLM's model process (speech_decoder.in_engine) needs that process, and is one."""
        if self.speech_tokenizer.in_engine and self.speech_decoder.in_engine is False:
            raise ValueError("speech_tokenizer.in_engine needs speech_decoder.in_engine (it runs in the decoder host)")
        hosted = self.speech_decoder.in_engine or self.speech_tokenizer.in_engine
        if hosted and not self._host_fits(self.audio_device):
            raise ValueError("speech_decoder.in_engine needs one vLLM engine process (not inproc, no parallelism) "
                             "and one decoder (not audio_device=all)")  # fmt: skip
        return self

    def resolved(self, *, cuda: bool, model_seq_length: int) -> Settings:
        """Every default that depends on the machine or the model, decided here and nowhere else.

        ``cuda``: whether a GPU is there; ``model_seq_length``: the LLM's context from its config.json.
        """
        engine = self.engine.resolved(cuda=cuda, model_seq_length=model_seq_length)
        max_active = engine.max_num_seqs if self.admission.max_active is None else self.admission.max_active
        max_queued = max_active if self.admission.max_queued is None else self.admission.max_queued
        measured = self.admission.measured
        measured = (cuda and self.admission.max_active is None) if measured is None else measured
        device = self.audio_device
        if device == "auto":
            device = "cuda:0" if cuda else "cpu"
        gpu = cuda and (device == "all" or device.startswith("cuda"))  # half precision there (fields' descriptions)
        tok_dtype = self.speech_tokenizer.dtype.replace("auto", "float16" if gpu else "float32")
        decoder_dtype = self.speech_decoder.dtype.replace("auto", "bfloat16" if gpu else "float32")
        # The audio models in vLLM's model process on one GPU: one CUDA context, no time-slicing with the LLM's (H100,
        # session 21). Not when they were put on another GPU than vLLM's first; a hosted tokenizer brings the decoder.
        hosted = self.speech_decoder.in_engine
        if hosted is None:
            on_llm_gpu = cuda and device in ("cuda", "cuda:0") and self._host_fits(device)
            hosted = bool(self.speech_tokenizer.in_engine) or on_llm_gpu
        tok_hosted = hosted if self.speech_tokenizer.in_engine is None else self.speech_tokenizer.in_engine
        tokenizer = self.speech_tokenizer.model_copy(update={"in_engine": tok_hosted, "dtype": tok_dtype})
        decoder = self.speech_decoder.model_copy(update={"dtype": decoder_dtype, "in_engine": hosted})
        admission = {"max_active": max_active, "max_queued": max_queued, "measured": measured}
        return self.model_copy(
            update={
                "engine": engine,
                "admission": self.admission.model_copy(update=admission),
                "speech_decoder": decoder,
                "speech_tokenizer": tokenizer,
                "audio_device": device,
            }
        )
