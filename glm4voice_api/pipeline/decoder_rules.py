"""The speech decoder's per-stream rules, built from its settings, and applied to a decoder that is already running.

Most of `--speech-decoder.*` decides how each stream is cut into chunks and when a chunk is decoded (chunking,
schedule, context, hold, pass bound, preemption) or how many Euler steps a pass takes. None of these shapes what was
loaded or captured at startup (dtype, max_batch, CUDA graphs and compiled blocks do), so a decoder with no open
stream can take new values between two streams and decode exactly as a fresh server started with them would. The
graphs' batch sizes (`graph_batches`) are a rule too: the graphs a new set needs are captured when it is applied,
and rows decode the same in any bucket (padding rows never mix with real ones); so are `compile_outside_graphs`
(compiled and warmed up when applied, within float rounding of the eager steps), `bucket_shapes` (masked
padding, within float rounding), `hift_graphs` (HiFT's graphs captured when applied; within float rounding) and
`flow_front_graphs` (the flow's encoder and regulator as graphs, captured when applied; within float rounding), and
`green_sms` (which SMs run the same kernels: green_split.py). That
is what lets one warm GPU server compare several configurations in turn (`bench/gpu_server.py`'s
`/bench/reconfigure`), where a fresh server per configuration costs ~60-90 s of scarce device time and the host's
run-to-run spread (README, Measured figures) would dominate the comparison.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from glm4voice_api.config import SpeechDecoderSettings
from glm4voice_api.models.speech_decoder.compiled import (
    compile_outside_graphs,
    outside_graphs_compiled,
    uncompile_outside_graphs,
    warm_outside_graphs,
)
from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.models.speech_decoder.hift_graphs import HiFTGraphConfig
from glm4voice_api.pipeline.chunk_policy import AdaptiveChunkPolicy, ChunkPolicy, FixedSchedule
from glm4voice_api.pipeline.deadline_hold import DeadlineHold
from glm4voice_api.pipeline.decoder_scheduler import NEAR_MISS_S, DecoderScheduler
from glm4voice_api.pipeline.green_split import set_green_split

RULES = (
    "schedule",
    "max_prompt_tokens",
    "chunking",
    "first_rank_ms",
    "first_company_ms",
    "first_chunk",
    "max_chunk",
    "lead_ms",
    "hold",
    "max_pass_ms",
    "preempt",
    "ode_steps",
    "graph_batches",
    "compile_outside_graphs",
    "bucket_shapes",
    "hift_graphs",
    "hift_graph_rows",
    "hift_graph_frames",
    "flow_front_graphs",
    "green_sms",
)
"""The settings `apply_rules` changes on a running decoder; the others need a restart."""

logger = logging.getLogger(__name__)


def chunk_policy(options: SpeechDecoderSettings) -> ChunkPolicy:
    if options.chunking == "adaptive":
        return AdaptiveChunkPolicy(
            first_chunk=options.first_chunk, max_chunk=options.max_chunk, lead_s=options.lead_ms / 1000
        )
    company = options.first_company_ms / 1000 if options.first_company_ms > 0 else None
    return FixedSchedule(tuple(options.schedule), first_rank_s=options.first_rank_ms / 1000, first_company_s=company)


def hold_lead_s(options: SpeechDecoderSettings) -> float | None:
    """Deadline batching's lead (None: off)."""
    return options.lead_ms / 1000 if options.hold else None


def capture_graphs(decoder: SpeechDecoder, options: SpeechDecoderSettings, max_batch: int) -> int:
    """Capture the flow's CUDA graph of every (batch, frames) bucket these rules can use and that is not captured
    yet (none when the decoder runs eagerly); returns how many graphs the decoder holds.

    The longest row is a full context plus the longest chunk (200 tokens of context when unbounded: longer rows are
    rare and a bucket missing then is captured on first use)."""
    graphed = decoder.flow.graphed
    if graphed is None:
        return 0
    graphed.set_batch_buckets(options.graph_batches)
    chunk = options.max_chunk if options.chunking == "adaptive" else max(options.schedule)
    frames = decoder.mel_frames((options.max_prompt_tokens or 200) + chunk)
    return graphed.warmup(max_batch, frames, decoder.flow.input_embedding.weight)


def set_outside_graphs_compiled(decoder: SpeechDecoder, on: bool) -> None:
    """HiFT's elementwise steps compiled (and warmed up now, so no compile lands on a stream) or eager; on CUDA only:
    a CPU server keeps its quick start."""
    if decoder.device.type != "cuda" or on == outside_graphs_compiled(decoder):
        return
    if not on:
        uncompile_outside_graphs(decoder)
        return
    compile_outside_graphs(decoder)
    try:
        warm_outside_graphs(decoder)
    except Exception:  # a toolchain that cannot compile (as _prepare_flow does for the flow's blocks): run eagerly
        logger.exception("compiling HiFT and the flow encoder failed; they run uncompiled")
        uncompile_outside_graphs(decoder)


def set_hift_graphs(decoder: SpeechDecoder, options: SpeechDecoderSettings, max_batch: int) -> int:
    """HiFT through bucketed CUDA graphs (`hift_graphs.py`) or eagerly (`vocode_padded`); on CUDA only (a CPU server
    keeps the unpadded eager pass). Every bucket these rules can use is captured now (a capture on first use would
    land on a stream's chunk): rows up to `max_batch` in the flow graphs' batch buckets, frames up to the longest
    chunk's (its new frames, the cache frame, one frame of the mel formula's flooring). Returns the graphs held."""
    graphed = decoder.set_hift_graphs(options.hift_graphs and decoder.device.type == "cuda")
    if graphed is None:
        return 0
    graphed.set_batch_buckets(options.graph_batches)
    graphed.config = hift_graph_config(graphed.config, options)
    chunk = options.max_chunk if options.chunking == "adaptive" else max(options.schedule)
    return graphed.warmup(max_batch, decoder.mel_frames(chunk) + 2)


def hift_graph_config(config: HiFTGraphConfig, options: SpeechDecoderSettings) -> HiFTGraphConfig:
    """Only the small buckets (launch-bound: a lone reply's first chunks) are graphed and captured; passes of more
    rows or longer rows run eager and unpadded."""
    rows, frames = options.hift_graph_rows, options.hift_graph_frames
    return replace(config, max_rows=rows, max_rows_frames=rows * frames)


def set_flow_front_graphs(decoder: SpeechDecoder, options: SpeechDecoderSettings, max_batch: int) -> int:
    """The flow's front (token embedding, encoder, length regulator, speaker affine) through bucketed CUDA graphs
    (`flow_front_graphs.py`) or eagerly; on CUDA only, and used only beside the ODE's graphs (`cuda_graphs`). Every
    bucket these rules can use is captured now: rows up to `max_batch` in the flow graphs' batch buckets, tokens up to
    the longest flow input (a full context, 200 tokens when unbounded as `capture_graphs` assumes, plus the longest
    chunk). Returns the graphs held."""
    front = decoder.flow.set_front_graphs(options.flow_front_graphs and decoder.device.type == "cuda")
    if front is None or decoder.flow.graphed is None:
        return 0
    chunk = options.max_chunk if options.chunking == "adaptive" else max(options.schedule)
    return front.warmup(max_batch, (options.max_prompt_tokens or 200) + chunk)


def apply_rules(decoder: object, options: SpeechDecoderSettings) -> None:
    """Give a running decoder (a `DecoderScheduler` or a pool of them) the rules of `options` for its next streams.

    Only while no stream is open (RuntimeError otherwise): a stream's chunks follow one set of rules from its first
    chunk to its last. The scheduler's thread reads these attributes only while it has streams to serve. On CUDA
    the graphs the new rules need are captured here (GPU work: call it from a worker thread, never the event loop),
    so that no stream waits for a capture, as at startup.
    """
    schedulers: list[DecoderScheduler] = getattr(decoder, "schedulers", None) or [decoder]  # type: ignore[list-item]
    busy = sum(s.active_streams() for s in schedulers)
    if busy:
        msg = f"{busy} decoder streams are open; the rules change only between streams"
        raise RuntimeError(msg)
    for s in schedulers:
        s.policy = chunk_policy(options)
        lead = hold_lead_s(options)
        s.hold = None if lead is None else DeadlineHold(lead, margin_s=NEAR_MISS_S)
        s.max_pass_s = options.max_pass_ms / 1000 or None
        s.preempt = options.preempt
        s.stream_config = replace(
            s.stream_config, schedule=tuple(options.schedule), max_prompt_tokens=options.max_prompt_tokens or None
        )
        s.decoder.set_ode_steps(options.ode_steps)
        capture_graphs(s.decoder, options, s.max_batch)
        set_outside_graphs_compiled(s.decoder, options.compile_outside_graphs)
        s.decoder.set_shape_buckets(options.bucket_shapes)
        set_hift_graphs(s.decoder, options, s.max_batch)
        set_flow_front_graphs(s.decoder, options, s.max_batch)
        if s.own_stream:  # beside the LLM's model (see `no_captures_on_first_use`)
            no_captures_on_first_use(s.decoder)
        set_green_split(s, options.green_sms)


def no_captures_on_first_use(decoder: SpeechDecoder) -> None:
    """Buckets the warm-ups left out (a custom voice's prompt on top of a full context, or an unbounded context) run
    eagerly instead of being captured when a pass first needs them. For a decoder beside vLLM's model (its process):
    while a CUDA graph is captured, the device's default random generator is in capture mode, and the LLM's sampling
    from it on another thread meanwhile kills the engine ("Offset increment outside graph capture encountered
    unexpectedly": H100, 2026-12-06, bench/results/GPU.md session 29, with a graph captured beside the warm-up)."""
    for graphs in (decoder.flow.graphed, decoder.flow.graphed_front, decoder.hift_graphs):
        if graphs is not None:
            graphs.capture_on_first_use = False
