"""Builds and owns the long-lived parts: checkpoints, text tokenizer, engine, speech tokenizer and decoder, store.

`build_runtime` resolves the settings' defaults once (`Settings.resolved`), loads the three models, starts the
engine and the worker threads, and returns a `Runtime`: a plain record of what was built. The serving layer takes
from it only the parts each service uses (`serving.services.Services.build`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glm4voice_api.config import OFFICIAL_FOLDERS, Settings
from glm4voice_api.engine.base import LLMEngine
from glm4voice_api.logs import process_uptime_s
from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.models.llm_files import check_llm_weights, read_llm_config
from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.pipeline.audio_input import AudioInput
from glm4voice_api.pipeline.decoder_pool import DecoderPool
from glm4voice_api.pipeline.decoder_rules import (
    capture_graphs,
    chunk_policy,
    hold_lead_s,
    no_captures_on_first_use,
    set_flow_front_graphs,
    set_hift_graphs,
    set_outside_graphs_compiled,
)
from glm4voice_api.pipeline.decoder_scheduler import DecoderScheduler
from glm4voice_api.pipeline.green_split import set_green_split
from glm4voice_api.pipeline.llm_pause import LLMPause
from glm4voice_api.pipeline.remote_decoder import RemoteDecoder, RemoteTokenizer
from glm4voice_api.pipeline.sampling import Sampling
from glm4voice_api.pipeline.tokenizer_worker import SpeechTokenizerWorker
from glm4voice_api.random_checkpoints.default import ensure_default_checkpoints
from glm4voice_api.random_checkpoints.llm import RANDOM_WEIGHTS_KEY
from glm4voice_api.store import Store, open_store
from glm4voice_api.text.prompt import PromptBuilder
from glm4voice_api.text.tokenizer import GLM4Tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    """What the server says about the model it serves (`/v1/models`) and what requests are checked against."""

    name: str
    root: str
    max_model_len: int
    random_weights: bool
    aliases: bool = False
    """Whether OpenAI's model names (gpt-4o-audio-preview, tts-1, whisper-1, ...) are accepted as this model."""


@dataclass(frozen=True)
class CheckpointFolders:
    """The three official folders the server loads."""

    llm: Path
    speech_tokenizer: Path
    decoder: Path


@dataclass
class Runtime:
    settings: Settings
    """Resolved: every machine- and model-dependent default is filled in."""
    model: ServedModel
    tokenizer: GLM4Tokenizer
    prompts: PromptBuilder
    sampling: Sampling
    engine: LLMEngine
    paths: CheckpointFolders
    audio_input: AudioInput
    decoder: DecoderScheduler | DecoderPool | RemoteDecoder
    """Speech output: one decoder thread (per GPU with `audio_device=all`) batching every reply's chunks."""
    voice_maker: SpeechDecoder
    """Makes speaker prompts from reference audio (no model weights involved, only the decoder's mel geometry)."""
    store: Store
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        for close in reversed(self.closers):
            try:
                await close()
            except Exception:
                logger.exception("error while shutting down")


def resolve_paths(settings: Settings) -> CheckpointFolders:
    """The three checkpoint folders: given ones, else the built-in tiny default (created once)."""
    paths = {k: (p.resolve() if p else None) for k, p in settings.model_paths().items()}
    if any(p is None for p in paths.values()):
        default = ensure_default_checkpoints(settings.cache_dir.resolve())
        for key, folder in OFFICIAL_FOLDERS.items():
            paths[key] = paths[key] or default / folder
    return CheckpointFolders(**paths)  # type: ignore[arg-type]


def is_random_weights(llm_config: dict, settings: Settings) -> bool:
    return bool(llm_config.get(RANDOM_WEIGHTS_KEY)) or settings.engine.load_format == "dummy"


def cuda_available() -> bool:
    from glm4voice_api.engine.vllm_engine import cuda_available as nvml_cuda_available

    return nvml_cuda_available()


def capacity_key(runtime: Runtime) -> str:
    """What decides how many streams this server keeps gap-free (`serving.capacity.CapacityMemory`): the GPU, the
    model folders and every engine, speech tokenizer and decoder setting. Any change makes a new key, so a knee
    measured on other hardware or another configuration is never reused."""
    device = "cpu"
    if cuda_available():
        from glm4voice_api.engine.vllm_engine import gpu_name

        device = gpu_name(0)
    s = runtime.settings
    parts = {
        "accelerator": device,
        "paths": str(runtime.paths),
        **{name: getattr(s, name).model_dump(mode="json") for name in ("engine", "speech_tokenizer", "speech_decoder")},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def decoder_devices(settings: Settings) -> list[str]:
    """One decoder per GPU for `audio_device=all`, else the one (resolved) audio device."""
    import torch

    if settings.audio_device == "all":
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
    return [settings.audio_device]


def tokenizer_device(settings: Settings) -> str:
    """Where the speech tokenizer runs: the audio device, or cuda:0 when decoders spread over every GPU."""
    if settings.audio_device == "all":
        return "cuda:0" if cuda_available() else "cpu"
    return settings.audio_device


def _load_audio_input(settings: Settings, path: Path, *, beside_model: bool = False) -> AudioInput:
    """`beside_model`: in vLLM's model process (the decoder host), where `own_stream` applies."""
    import torch

    from glm4voice_api.models.speech_tokenizer.loader import load_speech_tokenizer

    start = time.perf_counter()
    config = settings.speech_tokenizer
    dtype = getattr(torch, config.dtype)
    model = load_speech_tokenizer(path, tokenizer_device(settings), dtype)
    if beside_model and config.own_stream:
        model.use_own_stream()
    worker = SpeechTokenizerWorker(model, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms)
    worker.start()
    logger.info("speech tokenizer ready in %.1f s", time.perf_counter() - start)
    return AudioInput(worker, settings.request_limits, tokens_per_second=model.model.config.tokens_per_second)


def _build_scheduler(
    settings: Settings, path: Path, device: str, *, beside_model: bool | None = None, llm_gate: Any = None
) -> DecoderScheduler:
    """`beside_model`: the LLM runs in this process (default: the in-process engine; the decoder host passes True).
    `llm_gate`: the engine's step gate there (pipeline/llm_pause.py)."""
    import torch

    from glm4voice_api.engine.vllm_engine import in_process
    from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
    from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig

    options = settings.speech_decoder
    dtype = getattr(torch, options.dtype)
    start = time.perf_counter()
    decoder = load_speech_decoder(path, device, dtype, ode_steps=options.ode_steps)
    loaded = time.perf_counter() - start
    if device.startswith("cuda"):
        _prepare_flow(decoder, settings, device)
        set_outside_graphs_compiled(decoder, options.compile_outside_graphs)
    decoder.set_shape_buckets(options.bucket_shapes)
    if device.startswith("cuda") and options.hift_graphs:  # after the compiles: the graphs capture compiled kernels
        graphs = set_hift_graphs(decoder, options, options.max_batch)
        logger.info("decoder on %s: %d HiFT graphs captured", device, graphs)
    if device.startswith("cuda") and options.flow_front_graphs:  # after the compiles (the encoder's layers) too
        graphs = set_flow_front_graphs(decoder, options, options.max_batch)
        logger.info("decoder on %s: %d flow front graphs captured", device, graphs)
    logger.info("decoder on %s ready in %.1f s (weights %.1f s)", device, time.perf_counter() - start, loaded)
    config = DecoderStreamConfig(
        schedule=tuple(options.schedule),
        max_prompt_tokens=options.max_prompt_tokens or None,  # 0: the whole history
        # On a GPU the per-chunk noise is drawn there (see DecoderStreamConfig.rng_device); CPU keeps the
        # reference's exact draws.
        rng_device=device if device.startswith("cuda") else "cpu",
    )
    own_stream = device.startswith("cuda") and (in_process(settings.engine) if beside_model is None else beside_model)
    if own_stream:  # beside the LLM: a capture while serving could kill its engine
        no_captures_on_first_use(decoder)
    scheduler = DecoderScheduler(
        decoder,
        config,
        policy=chunk_policy(options),
        max_batch=options.max_batch,
        own_stream=own_stream,
        max_pass_s=options.max_pass_ms / 1000 or None,
        preempt=options.preempt,
        hold_lead_s=hold_lead_s(options),
        llm_pause=None if llm_gate is None else LLMPause(llm_gate, options.solo_first_pass, options.solo_first_share),
    )
    set_green_split(scheduler, options.green_sms)
    scheduler.start()
    return scheduler


def _prepare_flow(decoder: SpeechDecoder, settings: Settings, device: str, *, compile_blocks: bool = True) -> None:
    """On CUDA: compile the flow estimator's blocks and capture every shape bucket's ODE step as a CUDA graph.

    Both happen before the server is ready: a compile or a capture on first use would land on some user's first
    audio. A compile that fails (an unsupported GPU or toolchain) is logged and the decoder runs uncompiled.
    """
    options = settings.speech_decoder
    if not options.cuda_graphs:
        return
    estimator = decoder.flow.decoder.estimator
    if options.compile_blocks and compile_blocks:
        # On the cache volume (`compile_cache_env`), so a restarted server reuses the kernels: ~6 s, not ~30 s.
        os.environ.setdefault(
            "TORCHINDUCTOR_CACHE_DIR", compile_cache_env(settings.cache_dir.resolve())["TORCHINDUCTOR_CACHE_DIR"]
        )
        estimator.compile_blocks()
    start = time.perf_counter()
    decoder.flow.enable_graphs()
    try:
        count = capture_graphs(decoder, options, options.max_batch)
    except Exception:
        if not estimator.blocks_compiled:
            raise
        logger.exception("decoder on %s: compiling the flow estimator failed; it runs uncompiled", device)
        estimator.uncompile_blocks()
        _prepare_flow(decoder, settings, device, compile_blocks=False)
        return
    logger.info(
        "decoder on %s: %d CUDA graphs captured in %.1f s (blocks compiled: %s)",
        device,
        count,
        time.perf_counter() - start,
        estimator.blocks_compiled,
    )


def start_audio_models(
    settings: Settings,
    paths: CheckpointFolders,
    after: threading.Event | None = None,
    *,
    decoders: bool = True,
    tokenizer: bool = True,
) -> list[asyncio.Future]:
    """Load the speech tokenizer and decoder(s) on worker threads, starting NOW (not when awaited), or, with `after`,
    as soon as that event is set.

    Why now: `build_runtime` then starts vLLM, whose start blocks the event loop for about a minute on a GPU
    (engine process, weights, compilation, warm-up); the speech models load and capture their CUDA graphs
    meanwhile instead of before it (ready in max(engine, audio) rather than their sum). Why `after`: while vLLM is
    about to fork its engine core, no thread may initialise CUDA (or hold torch's CPU locks) in this process.
    """
    loop = asyncio.get_running_loop()
    jobs: list[tuple[Callable, tuple]] = [(_load_audio_input, (settings, paths.speech_tokenizer))] if tokenizer else []
    jobs += [(_build_scheduler, (settings, paths.decoder, d)) for d in decoder_devices(settings) if decoders]
    return [loop.run_in_executor(None, _run_after, after, job, args) for job, args in jobs]


def _run_after(after: threading.Event | None, job: Callable, args: tuple) -> object:
    if after is not None:
        after.wait()
    return job(*args)


async def _start_remote_decoder(settings: Settings, paths: CheckpointFolders, engine: Any) -> RemoteDecoder:
    """The decoder (and with speech_tokenizer.in_engine the tokenizer) in vLLM's model process
    (pipeline/decoder_host.py), behind a scheduler's interface."""
    remote = RemoteDecoder()
    # Only what the models' builds read: API keys and store URLs stay in this process.
    parts = {"speech_decoder", "speech_tokenizer", "request_limits", "engine", "audio_device", "cache_dir"}
    spec = {
        "settings": settings.model_dump_json(include=parts | {"switch_interval_ms"}),
        "decoder_path": str(paths.decoder),
        "device": decoder_devices(settings)[0],
        "tokenizer_path": str(paths.speech_tokenizer) if settings.speech_tokenizer.in_engine else None,
    }
    try:
        await remote.start(lambda s: engine.call_workers("glm4voice_start_decoder_host", s), spec)
    except BaseException:
        await remote.close()
        raise
    return remote


def _voice_maker(settings: Settings, path: Path) -> Any:
    """With the decoder in vLLM's process, voices are made here from a CPU copy (they need its mel geometry only)."""
    import torch

    from glm4voice_api.models.speech_decoder.loader import load_speech_decoder

    return load_speech_decoder(path, "cpu", torch.float32)


def _as_decoder(schedulers: list) -> DecoderScheduler | DecoderPool | RemoteDecoder:
    if len(schedulers) == 1 and isinstance(schedulers[0], RemoteDecoder):
        return schedulers[0]
    if len(schedulers) == 1:
        return schedulers[0]
    logger.info("decoder: one per device (%d devices)", len(schedulers))
    return DecoderPool(schedulers)


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


def compile_cache_env(cache_dir: Path) -> dict[str, str]:
    """Where the compilers keep what they built, all under the server's `cache_dir` (an operator's setting or
    environment variable of the same name wins): vLLM's torch.compile artifacts and model inspections
    (VLLM_CACHE_ROOT, else ~/.cache/vllm), Triton's kernels (TRITON_CACHE_DIR, else ~/.triton) and inductor's
    (TORCHINDUCTOR_CACHE_DIR, the decoder's compiled blocks). Why: one volume then makes a restart warm. On an H100
    (2026-12-05) vLLM's compile took 34-38 s cold and 6 s warm, and a server was ready in 58 s warm against 96-109 s
    cold; a container that keeps only `--cache-dir` used to lose all but the decoder's part."""
    return {
        "VLLM_CACHE_ROOT": str(cache_dir / "vllm"),
        "TRITON_CACHE_DIR": str(cache_dir / "triton"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "inductor"),
    }


async def build_runtime(settings: Settings, engine: LLMEngine | None = None) -> Runtime:
    """Load everything the server needs. `engine` lets unit tests pass a fake."""
    paths = resolve_paths(settings)
    if not paths.llm.is_dir():
        raise CheckpointFormatError(f"LLM folder {paths.llm} does not exist")
    llm_config = read_llm_config(paths.llm)  # a broken file is named with its problem, before anything starts
    if engine is None and settings.engine.load_format != "dummy":
        check_llm_weights(paths.llm)
    tokenizer = GLM4Tokenizer.from_dir(paths.llm)
    random_weights = is_random_weights(llm_config, settings)
    sampling = Sampling(tokenizer.ids, settings.interleave_constraint, random_weights=random_weights)
    # Every machine- and model-dependent default is decided here, once, before anything starts.
    cuda = cuda_available()
    settings = settings.resolved(cuda=cuda, model_seq_length=int(llm_config.get("seq_length", 8192)))
    # The store first: a bad or unreachable store URL fails the start before minutes of model loading.
    store = open_store(settings.store, settings.cache_dir.resolve())
    closers = [store.close]
    await store.ping()
    for name, value in compile_cache_env(settings.cache_dir.resolve()).items():
        os.environ.setdefault(name, value)  # before vLLM is imported and its engine core forked or spawned
    # Every module the parallel start needs is imported here first, on this thread: two threads importing
    # overlapping parts of torch at once can deadlock on the import locks (seen: torch._dynamo under vLLM).
    imports_began = time.perf_counter()
    from glm4voice_vllm.decoder_host import DECODER_HOST_EXTENSION

    import glm4voice_api.models.speech_decoder.loader
    import glm4voice_api.models.speech_tokenizer.loader  # noqa: F401
    from glm4voice_api.engine.vllm_engine import engine_core_forks, in_process, preload_vllm

    if engine is None:
        preload_vllm()
    # The start's phases, for a cold start's breakdown (GPU.md: ~24 s passed before vLLM's engine started).
    logger.info(
        "start: the models' and vLLM's modules imported in %.1f s (process up %s s)",
        time.perf_counter() - imports_began,
        process_uptime_s(),
    )
    # With the engine core in this process, its start captures CUDA graphs of its own: a capture of ours at the
    # same time fails ("operation not permitted when stream is capturing"), so then the audio models come after.
    overlap = engine is not None or not in_process(settings.engine)
    # When vLLM forks its engine core, the speech models start loading just after the fork (see engine_core_forks).
    forked = threading.Event() if engine is None and engine_core_forks(settings.engine, cuda=cuda) else None
    in_engine = engine is None and settings.speech_decoder.in_engine  # its fit is checked by Settings
    here = {"decoders": not in_engine, "tokenizer": not (in_engine and settings.speech_tokenizer.in_engine)}
    audio = start_audio_models(settings, paths, after=forked, **here) if overlap else []
    # The engine's warm-up beside the host's start (its captures are thread-local, so vLLM's steps may run meanwhile).
    beside = in_engine and settings.engine.warmup_beside_audio
    try:
        if engine is None:
            from glm4voice_api.engine.vllm_engine import VllmLLMEngine

            try:
                engine = await VllmLLMEngine.start(
                    paths.llm,
                    settings.engine,
                    num_valid_tokens=tokenizer.ids.num_valid,
                    random_weights=random_weights,
                    warmup_constraint=sampling.constraint(),
                    core_started=forked,
                    worker_extension=DECODER_HOST_EXTENSION if in_engine else None,
                    warm=not beside,
                )
            finally:
                if forked is not None and not forked.is_set():  # no fork seen (or the start failed): never wait on
                    logger.warning("vLLM did not fork its engine core: the speech models loaded after its start")
                    forked.set()
        closers.append(engine.shutdown)
        audio = audio or start_audio_models(settings, paths, **here)
        if in_engine:
            audio.append(asyncio.ensure_future(_start_remote_decoder(settings, paths, engine)))
        warm = engine.warm_up(settings.engine.warmup_batch_sizes, constraint=sampling.constraint()) if beside else None
        started, _ = await asyncio.gather(asyncio.gather(*audio), warm or asyncio.sleep(0))
    except BaseException:
        await _close_started(audio, closers)
        raise
    if here["tokenizer"]:
        audio_input, *schedulers = started
    else:  # the host's tokenizer, through its connection (started: the RemoteDecoder alone)
        schedulers = started
        tps = started[0].tokens_per_second
        audio_input = AudioInput(RemoteTokenizer(started[0]), settings.request_limits, tokens_per_second=tps)
    closers += [audio_input.worker.close, *(s.close for s in schedulers)]
    decoder = _as_decoder(schedulers)
    if random_weights:
        logger.warning("serving RANDOM WEIGHTS from %s: the output is noise, not GLM-4-Voice", paths.llm)
    model = ServedModel(
        settings.served_model_name,
        str(paths.llm),
        engine.info.max_model_len,
        random_weights,
        aliases=settings.model_aliases,
    )
    return Runtime(
        settings=settings,
        model=model,
        tokenizer=tokenizer,
        prompts=PromptBuilder(tokenizer),
        sampling=sampling,
        engine=engine,
        paths=paths,
        audio_input=audio_input,
        decoder=decoder,
        voice_maker=decoder.decoder
        if not in_engine
        else await asyncio.to_thread(_voice_maker, settings, paths.decoder),
        store=store,
        closers=closers,
    )
