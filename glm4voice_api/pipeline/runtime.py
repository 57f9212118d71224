"""Builds and owns the long-lived parts: checkpoints, text tokenizer, engine (and the audio models as they land)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from glm4voice_api.config import OFFICIAL_FOLDERS, Settings
from glm4voice_api.engine.base import InterleaveConstraint, LLMEngine
from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.pipeline.audio_input import AudioInput
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


async def start_audio_input(settings: Settings, path: Path) -> AudioInput:
    import torch

    from glm4voice_api.models.speech_tokenizer.loader import load_speech_tokenizer

    dtype = getattr(torch, settings.audio.tokenizer_dtype)
    model = await asyncio.to_thread(load_speech_tokenizer, path, audio_device(settings), dtype)
    worker = SpeechTokenizerWorker(
        model, max_batch=settings.audio.tokenizer_max_batch, max_wait_ms=settings.audio.tokenizer_max_wait_ms
    )
    worker.start()
    return AudioInput(worker, settings.limits)


async def start_decoder(settings: Settings, path: Path) -> DecoderScheduler | DecoderPool:
    devices = decoder_devices(settings)
    schedulers = await asyncio.gather(*(_start_scheduler(settings, path, device) for device in devices))
    if len(schedulers) == 1:
        return schedulers[0]
    logger.info("decoder: one per device on %s", ", ".join(devices))
    return DecoderPool(list(schedulers))


async def _start_scheduler(settings: Settings, path: Path, device: str) -> DecoderScheduler:
    import torch

    from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
    from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig

    name = settings.audio.decoder_dtype
    dtype = getattr(torch, ("bfloat16" if device.startswith("cuda") else "float32") if name == "auto" else name)
    decoder = await asyncio.to_thread(load_speech_decoder, path, device, dtype)
    if settings.audio.decoder_cuda_graphs and device.startswith("cuda"):
        decoder.flow.enable_graphs()
        # Every shape bucket is captured before the server is ready: a capture costs ~1 s, which would
        # otherwise land on some user's first audio.
        longest = (settings.audio.decoder_max_prompt_tokens or 200) + max(settings.audio.decoder_schedule)
        like = decoder.flow.input_embedding.weight
        count = await asyncio.to_thread(
            decoder.flow.graphed.warmup, settings.audio.decoder_max_batch, decoder.mel_frames(longest), like
        )
        logger.info("decoder on %s: %d CUDA graphs captured", device, count)
    config = DecoderStreamConfig(
        schedule=tuple(settings.audio.decoder_schedule),
        max_prompt_tokens=settings.audio.decoder_max_prompt_tokens,
        # On a GPU the per-chunk noise is drawn there (see DecoderStreamConfig.rng_device); CPU keeps the
        # reference's exact draws.
        rng_device=device if device.startswith("cuda") else "cpu",
    )
    scheduler = DecoderScheduler(decoder, config, max_batch=settings.audio.decoder_max_batch)
    scheduler.start()
    return scheduler


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
    audio_input = await start_audio_input(settings, paths["speech_tokenizer"])
    closers.append(audio_input.worker.close)
    decoder = await start_decoder(settings, paths["decoder"])
    closers.append(decoder.close)
    if engine is None:
        from glm4voice_api.engine.vllm_engine import VllmLLMEngine

        engine = await VllmLLMEngine.start(
            paths["llm"], settings.engine, num_valid_tokens=tokenizer.ids.num_valid, random_weights=random_weights
        )
    closers.append(engine.shutdown)
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
