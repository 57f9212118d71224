"""Builds and owns the long-lived parts: checkpoints, text tokenizer, engine (and the audio models as they land)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from glm4voice_api.config import OFFICIAL_FOLDERS, Settings
from glm4voice_api.engine.base import InterleaveConstraint, LLMEngine
from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.pipeline.audio_input import AudioInput
from glm4voice_api.pipeline.chunk_policy import AdaptiveChunkPolicy, FixedSchedule
from glm4voice_api.pipeline.decoder_scheduler import DecoderPool, DecoderScheduler
from glm4voice_api.pipeline.tokenizer_worker import SpeechTokenizerWorker
from glm4voice_api.random_checkpoints.default import ensure_default_checkpoints
from glm4voice_api.random_checkpoints.llm import RANDOM_WEIGHTS_KEY
from glm4voice_api.store import Store, open_store
from glm4voice_api.text.prompt import PromptBuilder
from glm4voice_api.text.tokenizer import GLM4Tokenizer

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    tokenizer: GLM4Tokenizer
    prompts: PromptBuilder
    engine: LLMEngine
    paths: dict[str, Path]
    random_weights: bool
    audio_input: AudioInput
    decoder: DecoderScheduler | DecoderPool
    store: Store
    closers: list = field(default_factory=list)
    observe_first_audio: Callable[[float], None] = lambda _seconds: None
    """Called with the seconds from request to first audio bytes (the app binds it to its metrics)."""
    observe_audio_out: Callable[[float], None] = lambda _seconds: None
    """Called with the seconds of audio each reply generated."""
    observe_rtf: Callable[[float], None] = lambda _rtf: None
    """Called with each audio stream's real-time factor (generation time over audio seconds)."""
    observe_rejection: Callable[[str], None] = lambda _reason: None
    """Called when a request is refused or stopped by a limit (reason: first_audio_timeout, request_timeout, ...)."""
    open_streams: int = 0
    """Streaming responses generating now."""

    def interleave_constraint(
        self, forced_text: list[int] | None = None, **kwargs: int | None
    ) -> InterleaveConstraint | None:
        """The sampler constraint for a reply, or None when the model is trusted to interleave by itself."""
        mode = self.settings.interleave_constraint
        if forced_text is None and (mode == "off" or (mode == "auto" and not self.random_weights)):
            return None
        ids = self.tokenizer.ids
        return InterleaveConstraint(
            text_range=(0, ids.num_text),
            audio_range=(ids.audio_0, ids.audio_0 + ids.audio_count),
            eos=(ids.user,),
            forced_text=tuple(forced_text) if forced_text is not None else None,
            **kwargs,
        )

    async def close(self) -> None:
        for close in reversed(self.closers):
            try:
                await close()
            except Exception:
                logger.exception("error while shutting down")


async def _close_started(audio: list[asyncio.Future], closers: list) -> None:
    """A failed start: stop whatever did start (audio workers that finished loading, the engine, the store)."""
    for part in await asyncio.gather(*audio, return_exceptions=True):
        close = getattr(getattr(part, "worker", part), "close", None)
        if close is not None and not isinstance(part, BaseException):
            closers.append(close)
    for close in reversed(closers):
        try:
            await close()
        except Exception:
            logger.exception("error while stopping after a failed start")


def resolve_paths(settings: Settings) -> dict[str, Path]:
    """The three checkpoint folders: given ones, else the built-in tiny default (created once)."""
    paths = {k: (p.resolve() if p else None) for k, p in settings.model_paths().items()}
    if any(p is None for p in paths.values()):
        default = ensure_default_checkpoints(settings.cache_dir.resolve())
        for key, folder in OFFICIAL_FOLDERS.items():
            paths[key] = paths[key] or default / folder
    return paths  # type: ignore[return-value]


def is_random_weights(llm_path: Path, settings: Settings) -> bool:
    config = json.loads((llm_path / "config.json").read_text())
    return bool(config.get(RANDOM_WEIGHTS_KEY)) or settings.engine.load_format == "dummy"


def audio_device(settings: Settings) -> str:
    """Where the speech tokenizer runs (and the decoder, unless `all` spreads it over every GPU)."""
    import torch

    if settings.audio.audio_device not in ("auto", "all"):
        return settings.audio.audio_device
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def decoder_devices(settings: Settings) -> list[str]:
    import torch

    if settings.audio.audio_device == "all":
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
    return [audio_device(settings)]


def _load_audio_input(settings: Settings, path: Path) -> AudioInput:
    import torch

    from glm4voice_api.models.speech_tokenizer.loader import load_speech_tokenizer

    start = time.perf_counter()
    dtype = getattr(torch, settings.audio.tokenizer_dtype)
    model = load_speech_tokenizer(path, audio_device(settings), dtype)
    worker = SpeechTokenizerWorker(
        model, max_batch=settings.audio.tokenizer_max_batch, max_wait_ms=settings.audio.tokenizer_max_wait_ms
    )
    worker.start()
    logger.info("speech tokenizer ready in %.1f s", time.perf_counter() - start)
    return AudioInput(worker, settings.limits)


def _build_scheduler(settings: Settings, path: Path, device: str) -> DecoderScheduler:
    import torch

    from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
    from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig

    audio = settings.audio
    name = audio.decoder_dtype
    dtype = getattr(torch, ("bfloat16" if device.startswith("cuda") else "float32") if name == "auto" else name)
    start = time.perf_counter()
    decoder = load_speech_decoder(path, device, dtype)
    loaded = time.perf_counter() - start
    longest_chunk = audio.decoder_max_chunk if audio.decoder_chunking == "adaptive" else max(audio.decoder_schedule)
    if audio.decoder_cuda_graphs and device.startswith("cuda"):
        decoder.flow.enable_graphs()
        # Every shape bucket is captured before the server is ready: a capture costs ~1 s, which would
        # otherwise land on some user's first audio.
        longest = (audio.decoder_max_prompt_tokens or 200) + longest_chunk
        like = decoder.flow.input_embedding.weight
        count = decoder.flow.graphed.warmup(audio.decoder_max_batch, decoder.mel_frames(longest), like)
        logger.info("decoder on %s: %d CUDA graphs captured", device, count)
    logger.info("decoder on %s ready in %.1f s (weights %.1f s)", device, time.perf_counter() - start, loaded)
    config = DecoderStreamConfig(
        schedule=tuple(audio.decoder_schedule),
        max_prompt_tokens=audio.decoder_max_prompt_tokens,
        # On a GPU the per-chunk noise is drawn there (see DecoderStreamConfig.rng_device); CPU keeps the
        # reference's exact draws.
        rng_device=device if device.startswith("cuda") else "cpu",
    )
    policy = (
        AdaptiveChunkPolicy(
            first_chunk=audio.decoder_first_chunk,
            max_chunk=audio.decoder_max_chunk,
            lead_s=audio.decoder_lead_ms / 1000,
        )
        if audio.decoder_chunking == "adaptive"
        else FixedSchedule(tuple(audio.decoder_schedule))
    )
    from glm4voice_api.engine.vllm_engine import in_process

    own_stream = device.startswith("cuda") and in_process(settings.engine, on_gpu=True)
    scheduler = DecoderScheduler(
        decoder, config, policy=policy, max_batch=audio.decoder_max_batch, own_stream=own_stream
    )
    scheduler.start()
    return scheduler


def start_audio_models(settings: Settings, paths: dict[str, Path]) -> list[asyncio.Future]:
    """Load the speech tokenizer and decoder(s) on worker threads, starting NOW (not when awaited).

    Why now: `build_runtime` then starts vLLM, whose start blocks the event loop for about a minute on a GPU
    (engine process, weights, compilation, warm-up); the speech models load and capture their CUDA graphs
    meanwhile instead of before it (ready in max(engine, audio) rather than their sum).
    """
    loop = asyncio.get_running_loop()
    devices = decoder_devices(settings)
    futures = [loop.run_in_executor(None, _load_audio_input, settings, paths["speech_tokenizer"])]
    futures += [loop.run_in_executor(None, _build_scheduler, settings, paths["decoder"], d) for d in devices]
    return futures


def _as_decoder(schedulers: list[DecoderScheduler]) -> DecoderScheduler | DecoderPool:
    if len(schedulers) == 1:
        return schedulers[0]
    logger.info("decoder: one per device (%d devices)", len(schedulers))
    return DecoderPool(schedulers)


async def build_runtime(settings: Settings, engine: LLMEngine | None = None) -> Runtime:
    """Load everything the server needs. `engine` lets unit tests pass a fake."""
    paths = resolve_paths(settings)
    if not paths["llm"].is_dir():
        raise CheckpointFormatError(f"LLM folder {paths['llm']} does not exist")
    tokenizer = GLM4Tokenizer.from_dir(paths["llm"])
    random_weights = is_random_weights(paths["llm"], settings)
    # The store first: a bad or unreachable store URL fails the start before minutes of model loading.
    store = open_store(settings.store, settings.cache_dir.resolve())
    closers = [store.close]
    await store.ping()
    # Every module the parallel start needs is imported here first, on this thread: two threads importing
    # overlapping parts of torch at once can deadlock on the import locks (seen: torch._dynamo under vLLM).
    import glm4voice_api.models.speech_decoder.loader  # noqa: F401
    import glm4voice_api.models.speech_tokenizer.loader  # noqa: F401

    from glm4voice_api.engine.vllm_engine import in_process, preload_vllm

    if engine is None:
        preload_vllm()
    # With the engine core in this process, its start captures CUDA graphs of its own: a capture of ours at the
    # same time fails ("operation not permitted when stream is capturing"), so then the audio models come after.
    overlap = engine is not None or not in_process(settings.engine, on_gpu=True)
    audio = start_audio_models(settings, paths) if overlap else []
    try:
        if engine is None:
            from glm4voice_api.engine.vllm_engine import VllmLLMEngine

            engine = await VllmLLMEngine.start(
                paths["llm"], settings.engine, num_valid_tokens=tokenizer.ids.num_valid, random_weights=random_weights
            )
        closers.append(engine.shutdown)
        audio = audio or start_audio_models(settings, paths)
        audio_input, *schedulers = await asyncio.gather(*audio)
    except BaseException:
        await _close_started(audio, closers)
        raise
    closers += [audio_input.worker.close, *(s.close for s in schedulers)]
    decoder = _as_decoder(schedulers)
    if random_weights:
        logger.warning("serving RANDOM WEIGHTS from %s: the output is noise, not GLM-4-Voice", paths["llm"])
    return Runtime(
        settings=settings,
        tokenizer=tokenizer,
        prompts=PromptBuilder(tokenizer),
        engine=engine,
        paths=paths,
        random_weights=random_weights,
        audio_input=audio_input,
        decoder=decoder,
        store=store,
        closers=closers,
    )
