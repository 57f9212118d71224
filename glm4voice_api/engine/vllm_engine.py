"""The vLLM adapter: the only module that imports vllm.

vLLM runs only the 9B LLM, on token ids: `skip_tokenizer_init=True`, token-id prompts, DELTA outputs (cumulative
outputs lose ids when a step yields several), explicit stop ids. Our plugin (`plugins/glm4voice_vllm`) registers the
GLM-4-Voice architecture (padding rows masked) and the interleave logits processor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from glm4voice_api.config import EngineSettings
from glm4voice_api.engine.base import (
    EngineDeadError,
    EngineInfo,
    EngineRequestError,
    GenerationDelta,
    GenerationParams,
    InterleaveConstraint,
    TokenLogprob,
    staircase_max_tokens,
)

logger = logging.getLogger(__name__)

ARCHITECTURE = "Glm4VoiceForCausalLM"
LOGITS_PROCESSOR = "glm4voice_vllm.logits:InterleaveLogitsProcessor"
WARMUP_SEED = 1 << 20
"""The warm-up's requests are seeded from here (see `VllmLLMEngine.warm_up`)."""


def cuda_available() -> bool:
    """Whether a GPU is there, asked through NVML rather than the CUDA runtime.

    Why NVML: the runtime's device query initialises the CUDA driver in this process, and a driver initialised before
    vLLM forks its engine core is not fork-safe (torch's PYTORCH_NVML_BASED_CUDA_CHECK exists for this case).
    """
    import torch

    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    return torch.cuda.is_available()


def gpu_name(index: int = 0) -> str:
    """The name of GPU ``index``, asked through NVML: torch's query initialises CUDA in this process, which holds no
    CUDA work when the audio models run in vLLM's process (the default on one GPU)."""
    from vllm.third_party import pynvml  # vLLM's own copy (it asks NVML the same way)

    try:
        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:  # no NVML here (another platform): the runtime's answer
        import torch

        return torch.cuda.get_device_name(index)
    return name.decode() if isinstance(name, bytes) else str(name)


def engine_core_forks(settings: EngineSettings, *, cuda: bool) -> bool:
    """Whether vLLM will fork (not spawn) its engine-core process for these settings, as things stand now.

    On a GPU vLLM forks unless told to spawn or CUDA is already initialised in this process (then it switches to
    spawn by itself); its CPU platform always spawns. A forked engine core skips the ~28 s a spawned one spends
    importing torch and vLLM again (H200: ready in 86.0-99.7 s on five fresh machines against 97-132 s spawned,
    2026-12-04), but nothing may initialise CUDA in this process between vLLM's check and its fork: the caller
    starts CUDA work only after `start(core_started=...)` has signalled the fork.
    """
    if not cuda or in_process(settings) or os.environ.get("VLLM_WORKER_MULTIPROC_METHOD") == "spawn":
        return False
    import torch

    return not torch.cuda.is_initialized()


def preload_vllm() -> None:
    """Import vLLM (and the torch parts it pulls in, torch._dynamo and inductor) on the calling thread."""
    import vllm.engine.arg_utils
    import vllm.v1.engine.async_llm
    import vllm.v1.engine.llm_engine  # noqa: F401


def _register_model_class() -> None:
    """Register the model class object in this process, over the plugin's lazy (by name) registration.

    Why: vLLM inspects a lazily registered class in a fresh Python subprocess the first time on a machine (the result
    is cached under VLLM_CACHE_ROOT/modelinfos), and that subprocess imports torch and vLLM again: 27 s on the
    critical path of a fresh H200's start (2026-12-04, "Resolved architecture" 27 s after the engine start; under 1 s
    on later starts with the cache). vLLM is already imported here and the model module does not touch CUDA, so the
    class is inspected in this process instead. Engine-core processes keep the plugin's lazy registration: they only
    load the class, they do not inspect it.
    """
    from glm4voice_vllm.model import Glm4VoiceForCausalLM
    from vllm import ModelRegistry

    ModelRegistry.register_model(ARCHITECTURE, Glm4VoiceForCausalLM)


def in_process(settings: EngineSettings) -> bool:
    """Whether the engine core runs in this process (`process` setting; auto: in its own process)."""
    # auto = separate: measured on an H100 (bench/results/gpu_suite.json), the in-process engine beside the decoder
    # made fewer LLM tokens per second at 32 streams than its own process did; kept as an option.
    return settings.process == "inproc"


def _logprobs(completion: Any, k: int | None) -> list[TokenLogprob] | None:
    """vLLM's per-position dicts (the sampled id plus the top k by rank) as `TokenLogprob`s."""
    if k is None or completion.logprobs is None:
        return None
    out = []
    for token_id, ranked in zip(completion.token_ids, completion.logprobs, strict=False):
        top = sorted((lp.rank, t, lp.logprob) for t, lp in ranked.items() if lp.rank is not None and lp.rank <= k)
        sampled = ranked.get(token_id)
        out.append(
            TokenLogprob(
                token_id,
                sampled.logprob if sampled is not None else float("-inf"),
                tuple((t, lp) for _, t, lp in top[:k]),
            )
        )
    return out


class VllmLLMEngine:
    """`AsyncLLM` behind the `LLMEngine` protocol."""

    def __init__(self, llm, info: EngineInfo, vocab_size: int) -> None:
        self._llm = llm
        self.info = info
        self._vocab_size = vocab_size
        self._active: set[str] = set()
        self.aborted = 0
        self.generated = 0
        self._busy_total = 0.0
        self._busy_since: float | None = None

    @classmethod
    async def start(
        cls,
        llm_path: Path,
        settings: EngineSettings,
        *,
        num_valid_tokens: int,
        random_weights: bool,
        warmup_constraint: InterleaveConstraint | None = None,
        core_started: threading.Event | None = None,
        worker_extension: str | None = None,
        warm: bool = True,
    ) -> VllmLLMEngine:
        """Start vLLM (engine core, weights, compilation) and warm it up.

        `core_started` is set in this process right after vLLM has forked its engine-core process (an at-fork hook),
        so that the caller can begin CUDA work then rather than after the whole start (`engine_core_forks`).
        """
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        config = json.loads((llm_path / "config.json").read_text())
        on_gpu = cuda_available()
        if not on_gpu:
            # Read by the engine core process, which inherits our environment.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kv_cache_gib))
        if settings.max_model_len is None or settings.max_num_seqs is None or settings.warmup_batch_sizes is None:
            msg = "engine settings must be resolved first (EngineSettings.resolved)"
            raise ValueError(msg)
        max_model_len, max_num_seqs = settings.max_model_len, settings.max_num_seqs
        args = AsyncEngineArgs(
            model=str(llm_path),
            skip_tokenizer_init=True,
            dtype=settings.dtype,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            tensor_parallel_size=settings.tensor_parallel_size,
            pipeline_parallel_size=settings.pipeline_parallel_size,
            data_parallel_size=settings.data_parallel_size,
            enforce_eager=bool(settings.enforce_eager),
            load_format=settings.load_format,
            seed=settings.seed,
            enable_prefix_caching=settings.enable_prefix_caching,
            hf_overrides={"architectures": [ARCHITECTURE], "glm4voice_num_valid_tokens": num_valid_tokens},
            logits_processors=[LOGITS_PROCESSOR],
            quantization=settings.quantization,
        )
        # 128 by default on a GPU (EngineSettings.resolved): admission runs ~35 streams on an H100, so vLLM's own
        # default (graphs up to 512 tokens, 86 of them) captured graphs never replayed. Measured on one H100
        # (2026-12-06, bench/results/GPU.md session 28): capture 2 s against 4-5 s, ready 39.7-40.2 s against
        # 41.7-42.7 s warm, first audio and the 32-stream and overload figures within the run-to-run spread.
        if settings.max_cudagraph_capture_size is not None and not settings.enforce_eager:
            args.compilation_config = {"max_cudagraph_capture_size": settings.max_cudagraph_capture_size}
        if worker_extension is not None:  # methods of ours in vLLM's model process (`call_workers`)
            args.worker_extension_cls = worker_extension
        logger.info(
            "starting the vLLM engine (%s)", "in this process" if in_process(settings) else "engine core process"
        )
        _register_model_class()
        if in_process(settings):
            args.distributed_executor_backend = "uni"  # the model itself in this process, not in a worker process
            from glm4voice_api.engine.inproc import InprocAsyncLLM

            logger.info("vLLM engine core in this process (one CUDA context with the speech decoder)")
            llm = InprocAsyncLLM.from_engine_args(args, UsageContext.OPENAI_API_SERVER)
        else:
            if core_started is not None:  # hooks cannot be removed: a later fork sets the event again, harmlessly
                os.register_at_fork(after_in_parent=core_started.set)
            llm = AsyncLLM.from_engine_args(args, usage_context=UsageContext.OPENAI_API_SERVER)
        info = EngineInfo(
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            random_weights=random_weights or settings.load_format == "dummy",
            extra={"device": "cuda" if on_gpu else "cpu"},
        )
        engine = cls(llm, info, vocab_size=int(config.get("padded_vocab_size", config.get("vocab_size", 0))))
        if warm:  # else the caller warms it up (beside the decoder host's start)
            await engine.warm_up(settings.warmup_batch_sizes, constraint=warmup_constraint)
        return engine

    async def warm_up(
        self,
        batch_sizes: list[int],
        prompt_len: int = 64,
        steps: int = 4,
        constraint: InterleaveConstraint | None = None,
    ) -> None:
        """Run each batch size with the serving sampler, so first requests do not pay for new shapes.

        Measured on an H100 (vLLM 0.26): without this the first burst of 32 requests waited 6.5 s for its first
        token, compiling the top-k/top-p kernel, which only runs when top_p < 1 (the serving default 0.8). The
        replies' own constraint (when they have one) takes part too: its masked logits compiled another variant
        of that kernel during the first request (1.2 s on an H100). One wave covers every size
        (`staircase_max_tokens`): the batch starts at the largest and steps down as groups of requests finish.
        """
        sizes = sorted({min(size, self.info.max_num_seqs) for size in batch_sizes})
        lengths = staircase_max_tokens(sizes, steps)

        async def one(i: int, max_tokens: int) -> None:
            # Seeded: vLLM then samples with each request's own generator, never the device's default one. While a
            # CUDA graph of ours is being captured (the decoder host's start runs beside this warm-up), the default
            # generator is in capture mode and a sample drawn from it outside the capture kills the engine ("Offset
            # increment outside graph capture encountered unexpectedly": H100, 2026-12-06, session 29).
            params = GenerationParams(
                max_tokens=max_tokens, temperature=0.8, top_p=0.8, constraint=constraint, seed=WARMUP_SEED + i
            )
            async for _ in self.generate([1 + (i % 1000)] * prompt_len, params, f"warmup-{i}"):
                pass

        await asyncio.gather(*(one(i, n) for i, n in enumerate(lengths)))
        logger.info("engine warm-up done for batch sizes %s", sizes)

    def _sampling_params(self, params: GenerationParams) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        return SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=max(0, params.top_k),
            seed=params.seed,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            stop_token_ids=list(params.stop_token_ids),
            output_kind=RequestOutputKind.DELTA,
            detokenize=False,
            skip_special_tokens=False,
            extra_args=params.constraint.to_extra_args() if params.constraint else None,
            logprobs=params.logprobs,
        )

    def _validate(self, prompt_ids: list[int], params: GenerationParams) -> None:
        """Reject here what the engine core would choke on: a rejected request must never kill the engine."""
        if not prompt_ids:
            raise EngineRequestError("empty prompt")
        if min(prompt_ids) < 0 or max(prompt_ids) >= self._vocab_size:
            raise EngineRequestError(f"prompt holds token ids outside the vocabulary 0..{self._vocab_size - 1}")
        if params.max_tokens < 1:
            raise EngineRequestError("max_tokens must be at least 1")
        if len(prompt_ids) + params.max_tokens > self.info.max_model_len:
            raise EngineRequestError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceed the context length "
                f"{self.info.max_model_len}"
            )

    async def generate(
        self, prompt_ids: list[int], params: GenerationParams, request_id: str
    ) -> AsyncIterator[GenerationDelta]:
        from vllm.exceptions import VLLMValidationError
        from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError

        from glm4voice_api.engine.inproc import InprocEngineDead

        self._validate(prompt_ids, params)
        if self._llm.errored:
            raise EngineDeadError("the engine is not running")
        sampling = self._sampling_params(params)
        # `request_id` is a label (often the client's x-request-id, which any client may reuse): vLLM gets an id of
        # our own, so two requests with the same label never share an engine id, and aborting one (a disconnect)
        # never ends the other's reply early as if the model had stopped.
        engine_id = f"{request_id}-{uuid.uuid4().hex}"
        if not self._active:
            self._busy_since = time.perf_counter()
        self._active.add(engine_id)
        finished = False
        try:
            async for out in self._llm.generate({"prompt_token_ids": prompt_ids}, sampling, engine_id):
                completion = out.outputs[0]
                finished = out.finished
                self.generated += len(completion.token_ids)
                yield GenerationDelta(
                    token_ids=list(completion.token_ids),
                    finished=out.finished,
                    finish_reason=completion.finish_reason if out.finished else None,
                    num_cached_tokens=out.num_cached_tokens or 0,
                    logprobs=_logprobs(completion, params.logprobs),
                )
        except (VllmEngineDeadError, InprocEngineDead) as exc:
            raise EngineDeadError(str(exc)) from exc
        except (ValueError, VLLMValidationError) as exc:  # 0.32's VLLMValidationError is no ValueError
            raise EngineRequestError(str(exc)) from exc
        finally:
            self._active.discard(engine_id)
            if not self._active and self._busy_since is not None:
                self._busy_total += time.perf_counter() - self._busy_since
                self._busy_since = None
            if not finished:
                # The consumer went away (client disconnect, limit, shutdown): free the engine's slot now.
                self.aborted += 1
                # Shielded: under anyio's level-triggered cancellation a plain await here would be cancelled too.
                await asyncio.shield(self.abort(engine_id))

    async def call_workers(self, method: str, *args: object) -> list:
        """Run `method` (of the worker extension given to `start`) in every process that runs the model."""
        return await self._llm.collective_rpc(method, args=args)

    async def abort(self, request_id: str) -> None:
        try:
            await self._llm.abort(request_id)
        except Exception:
            logger.debug("abort of %s failed", request_id, exc_info=True)

    async def check_health(self) -> None:
        if self._llm.errored:
            raise EngineDeadError("the engine is not running")
        try:
            await self._llm.check_health()
        except Exception as exc:
            raise EngineDeadError(str(exc)) from exc

    def active_requests(self) -> int:
        return len(self._active)

    def aborted_requests(self) -> int:
        return self.aborted

    def generated_tokens(self) -> int:
        """Tokens generated since start (cumulative; capacity control reads the per-stream rate from it)."""
        return self.generated

    def busy_seconds(self) -> float:
        """Wall time with at least one request in the engine (an upper bound on its GPU time; benchmarks)."""
        open_interval = time.perf_counter() - self._busy_since if self._busy_since is not None else 0.0
        return self._busy_total + open_interval

    async def shutdown(self) -> None:
        self._llm.shutdown()
