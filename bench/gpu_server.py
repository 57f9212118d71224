"""The real server (`create_app(settings)`) plus two benchmark-only routes, for the GPU suite.

- `GET /bench/stats`: busy seconds of the LLM engine, the decoder and the speech tokenizer (the GPU time split),
  decoder batches/chunks, CUDA-graph captures and the admission limit; a figure this server does not have is null
  (the route never fails).
- `GET /bench/passes?since=N[,N...]`: every decoder pass logged since the scheduler had run N passes (one count per
  scheduler: a pool has one per GPU) as `[start_s, seconds, rows, longest_tokens, new_tokens, first_rows, held_rows,
  nested]` (`PassRecord`), for the pass-cost model of bench/sim_schedule.py (`--fit`).
- `POST /bench/baseline {"concurrency": N, "max_tokens": M, "question_seconds": S}`: runs the seed's serving
  pattern (bench/baseline_seed.py) inside this process, on the same engine and GPU, and returns each turn's audio
  chunk arrivals (judged like the load generator's turns).

- `POST /bench/profile_loop {"seconds": S}`: cProfile of the event loop's thread for S seconds (its CPU seconds and the
  functions by self and cumulative time): where the API process's loop CPU goes under load.

- `POST /bench/profile_gpu {"seconds": S}`: every kernel the model's process ran for S seconds, by CUDA stream
  (`glm4voice_api/pipeline/gpu_profile.py`: the LLM's, the decoder's and the speech tokenizer's, busy and overlapping
  time, the top kernels), from the decoder host when the decoder runs in vLLM's process, else from this process.

- `POST /bench/reconfigure {"speech_decoder": {"chunking": "adaptive", ...}}`: the speech decoder's per-stream rules
  (`pipeline/decoder_rules.py`: RULES) become the server's own settings plus these, for the next streams (409 while
  a stream is open), and admission control starts again from its initial state, with `"capacity": {"backoff": B}`
  (CAPACITY_RULES) or its defaults. The suite runs several configurations in turn on one warm server with it
  (`--variant`, bench/warm_variants.py).

With the decoder hosted in vLLM's model process (`speech_decoder.in_engine`, the default on one GPU), the baseline
loads the seed's decoder into this process on the audio device (the seed's own layout); the decoder's rules go to the
host, the tokenizer's wait to the host's tokenizer when it runs there; the switch interval is this process's.

Settings come from the environment (GLM4VOICE_*), as for `glm4voice-api serve`. These routes exist only in this
benchmark entry point, never in the product's app.

    GLM4VOICE_LLM_PATH=... python -m bench.gpu_server --port 8000
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Request
from fastapi.responses import JSONResponse

from glm4voice_api.app import create_app
from glm4voice_api.config import Settings, SpeechDecoderSettings, SpeechTokenizerSettings
from glm4voice_api.pipeline.thread_cpu import thread_cpu_seconds


def _number(kind: Callable[[Any], Any], low: float, high: float | None = None, *, open_: bool = False) -> Any:
    """A parser of `kind` (int or float) values in [low, high] (no high: >= low; `open_`: the open interval)."""
    if high is None:
        bounds = f"be >= {low}"
    else:
        bounds = f"lie in ({low}, {high})" if open_ else f"lie in [{low}, {high}]"

    def parse(value: object) -> Any:
        x = kind(value)
        inside = (low < x < high) if open_ else (low <= x and (high is None or x <= high))
        if not inside:
            raise ValueError(f"must {bounds}, got {value!r}")
        return x

    return parse


CAPACITY_RULES = {
    "backoff": _number(float, 0, 1, open_=True),
    "initial": _number(int, 1),
    "settle_s": _number(float, 0, 60),
    "step": _number(float, 0, 1),
    "probe_s": _number(float, 0, 60),
    "near_miss_cut": _number(int, 0),
    "start_hold_s": _number(float, 0, 60),
    "start_cut": _number(int, 0),
    "start_window_s": _number(float, 1, 120),
}
"""Admission control's rules a phase may change (CapacityController's fields), each with its parser. A rule not
named goes back to the value the server started with (`initial`: the app's, an eighth of max_num_seqs)."""


def _path(obj: Any, *names: str) -> Any:
    """`obj.a.b.c` for names ("a", "b", "c"), or None where a link is missing: runtime internals get renamed."""
    for name in names:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _first(obj: Any, *paths: str) -> Any:
    """The first of the dotted attribute paths that exists (not None) under `obj`, called if it is a method."""
    for path in paths:
        value = _path(obj, *path.split("."))
        if callable(value):
            try:
                value = value()
            except Exception:  # noqa: BLE001 - a stats probe must never fail the request
                value = None
        if value is not None:
            return value
    return None


def _summed(rt: Any, name: str) -> float | None:
    """A counter summed over the decoder schedulers (one, or a pool's), None where they do not have it."""
    decoder = _path(rt, "decoder")
    schedulers = getattr(decoder, "schedulers", None) or ([decoder] if decoder is not None else [])
    values = [getattr(s, name, None) for s in schedulers]
    return None if not values or None in values else sum(values)


def _histogram_totals(histogram: Any) -> tuple[float | None, int | None]:
    """(sum, count) of a prometheus_client Histogram, (None, None) where there is none."""
    total = count = None
    for metric in histogram.collect() if histogram is not None else ():
        for sample in metric.samples:
            if sample.name.endswith("_sum"):
                total = float(sample.value)
            elif sample.name.endswith("_count"):
                count = int(sample.value)
    return total, count


def collect_stats(services: Any, rt: Any, gc_pauses: Any = None) -> dict:
    """The GPU time split and counters, each None where this server's internals do not have it."""
    graphs = _first(rt, "decoder.decoder.flow.graphed", "decoder.decoder.graphed", "decoder.graphs")
    # The server's own first audio (request received -> first audio bytes handed to the connection): beside the
    # decoder's split it shows what the request spends before its decoder stream opens (audio decoding, the speech
    # tokenizer, the prompt) and after the first pass (delivery).
    metrics = _path(services, "chat", "replies", "metrics")
    first_total, first_count = _histogram_totals(_path(metrics, "first_audio"))
    start_total, start_count = _histogram_totals(_path(metrics, "reply_start"))
    audio_total, audio_count = _histogram_totals(_path(metrics, "audio_prepare"))
    return {
        # First audio, split (sums over first_chunks streams): tokens arriving, waiting for a pass, the pass.
        **{name: _summed(rt, name) for name in ("first_chunks", "first_supply_s", "first_wait_s", "first_pass_s")},
        "first_audio_server_s": first_total,
        "first_audio_server_n": first_count,
        "reply_start_s": start_total,
        "reply_start_n": start_count,
        "audio_prepare_s": audio_total,
        "audio_prepare_n": audio_count,
        "llm_busy_s": _first(rt, "engine.busy_seconds"),
        "decoder_busy_s": _first(rt, "decoder.busy_seconds"),
        "tokenizer_busy_s": _first(rt, "audio_input.worker.busy_seconds", "speech_tokenizer.busy_seconds"),
        "decoder_batches": _first(rt, "decoder.batches"),
        "decoder_chunks": _first(rt, "decoder.chunks"),
        "decoder_underruns": _first(rt, "decoder.underruns"),
        # What admission control cuts on (serving/capacity.py): underruns past a stream's first 2 s, near misses.
        "decoder_settled_underruns": _first(rt, "decoder.settled_underruns"),
        "decoder_near_misses": _first(rt, "decoder.near_misses"),
        "llm_generated_tokens": _first(rt, "engine.generated_tokens"),
        "graph_captures": _first(graphs, "captures"),
        "graph_capture_s": _first(graphs, "capture_seconds"),
        "engine_active": _first(rt, "engine.active_requests"),
        "decoder_sessions": _first(rt, "decoder.active_streams"),
        "admission_limit": _first(
            services,
            "admission.capacity.limit",
            "admission.queue.limit",
            "admission.queue.max_active",
            "admission.max_active",
        ),
        "admission_active": _first(services, "admission.queue.active", "admission.in_flight"),
        "admission_queued": _first(services, "admission.queue.queued"),
        # With the decoder hosted in vLLM's model process, that process's threads too (vllm_main: its step loop).
        "thread_cpu_s": thread_cpu_seconds()
        | {f"vllm_{k}": v for k, v in (_first(rt, "decoder.host_thread_cpu_s") or {}).items()},
        # The cyclic collector's time (the whole process waits meanwhile: serving/gc_heap.py).
        "gc_pause_s": _first(gc_pauses, "seconds"),
        "gc_long_pauses": _first(gc_pauses, "long_pauses"),
        "gc_longest_pause_s": _first(gc_pauses, "longest_s"),
    }


def collect_passes(rt: Any, since: list[int]) -> dict:
    """Each scheduler's passes after its first `since[i]` (bounded by what its log still holds)."""
    decoder = _path(rt, "decoder")
    schedulers = getattr(decoder, "schedulers", None) or ([decoder] if decoder is not None else [])
    out = []
    for i, s in enumerate(schedulers):
        log, total = list(getattr(s, "pass_log", ())), int(getattr(s, "batches", 0))
        new = total - (since[i] if i < len(since) else 0)
        out.append(
            {"total": total, "passes": [list(p) for p in log[len(log) - min(new, len(log)) :]] if new > 0 else []}
        )
    return {"schedulers": out}


def hosted(rt: Any) -> bool:
    """Whether the decoder runs in vLLM's model process (`speech_decoder.in_engine`): no local scheduler to reach."""
    return rt is not None and rt.settings.speech_decoder.in_engine


def build(settings: Settings):
    app = create_app(settings)
    state: dict = {}

    @app.get("/bench/stats")
    async def stats(request: Request) -> dict:
        try:
            state = request.app.state
            return collect_stats(
                getattr(state, "services", None), getattr(state, "runtime", None), getattr(state, "gc_pauses", None)
            )
        except Exception as exc:  # noqa: BLE001 - never a 500: the suite records what it gets
            return {"error": f"{type(exc).__name__}: {exc}"[:200]}

    @app.get("/bench/passes")
    async def passes(request: Request, since: str = "") -> dict:
        try:
            counts = [int(x) for x in since.split(",") if x.strip()]
            return collect_passes(getattr(request.app.state, "runtime", None), counts)
        except Exception as exc:  # noqa: BLE001 - never a 500, as /bench/stats
            return {"error": f"{type(exc).__name__}: {exc}"[:200]}

    @app.post("/bench/reconfigure")
    async def reconfigure(request: Request, body: dict) -> JSONResponse:
        import asyncio

        from pydantic import ValidationError

        from glm4voice_api.pipeline.decoder_rules import RULES, apply_rules

        rt, changes = request.app.state.runtime, dict(body.get("speech_decoder") or {})
        # A list given as text (`--variant x:SPEECH_DECODER__SCHEDULE=[10,20,40]`, as the environment would give it,
        # or without the brackets: session 29's `SCHEDULE=10,8,8,...` spent a GPU phase on a 400).
        lists = {k for k, f in SpeechDecoderSettings.model_fields.items() if "list" in str(f.annotation)}
        try:
            changes = {
                k: json.loads(v if v.startswith("[") else f"[{v}]") if isinstance(v, str) and k in lists else v
                for k, v in changes.items()
            }
        except ValueError as exc:
            return JSONResponse({"error": f"speech_decoder: not a list: {exc}"}, 400)
        if unknown := sorted(set(changes) - set(RULES)):
            return JSONResponse({"error": f"not a per-stream rule: {unknown} (these are: {list(RULES)})"}, 400)
        capacity = dict(body.get("capacity") or {})
        if unknown := sorted(set(capacity) - set(CAPACITY_RULES)):
            return JSONResponse({"error": f"not a capacity rule: {unknown} (these are: {list(CAPACITY_RULES)})"}, 400)
        try:
            capacity = {k: CAPACITY_RULES[k](v) for k, v in capacity.items()}
        except ValueError as exc:
            return JSONResponse({"error": f"capacity: {exc}"}, 400)
        tokenizer = dict(body.get("speech_tokenizer") or {})
        if unknown := sorted(set(tokenizer) - {"max_wait_ms"}):
            return JSONResponse({"error": f"not a live tokenizer rule: {unknown} (this is: ['max_wait_ms'])"}, 400)
        process = dict(body.get("process") or {})
        if unknown := sorted(set(process) - {"switch_interval_ms"}):
            return JSONResponse({"error": f"not a live process rule: {unknown} (this is: ['switch_interval_ms'])"}, 400)
        try:  # the setting's own bounds (0, 100] ms; not named: the server's own setting
            switch_ms = process.get("switch_interval_ms", rt.settings.switch_interval_ms)
            if isinstance(switch_ms, bool) or not 0 < float(switch_ms) <= 100:
                raise ValueError(switch_ms)
            switch_ms = float(switch_ms)
        except (TypeError, ValueError) as exc:
            return JSONResponse({"error": f"switch_interval_ms: not in (0, 100]: {exc}"}, 400)
        try:  # every rule not named goes back to the server's own setting
            options = SpeechDecoderSettings.model_validate(rt.settings.speech_decoder.model_dump() | changes)
            wait_ms = SpeechTokenizerSettings.model_validate(
                rt.settings.speech_tokenizer.model_dump() | tokenizer
            ).max_wait_ms
        except ValidationError as exc:
            return JSONResponse({"error": str(exc)[:500]}, 400)
        try:
            if hosted(rt):  # the host applies them to its scheduler (pipeline/decoder_host.py)
                await rt.decoder.apply_rules(options.model_dump_json())
            else:
                await asyncio.to_thread(apply_rules, rt.decoder, options)
        except RuntimeError as exc:
            return JSONResponse({"error": str(exc)}, 409)
        if (worker := _path(rt, "audio_input", "worker")) is not None:
            worker.set_max_wait_ms(wait_ms)
        sys.setswitchinterval(switch_ms / 1000)
        controller, queue = (
            getattr(request.app.state, "capacity", None),
            _path(request.app.state, "services", "admission", "queue"),
        )
        if controller is not None and queue is not None:
            started = state.setdefault("capacity", {k: getattr(controller, k) for k in CAPACITY_RULES})
            for key in CAPACITY_RULES:  # a rule not named goes back to the value the server started with
                setattr(controller, key, capacity.get(key, started[key]))
            controller.reset()
            queue.set_limit(controller.limit)
        limit = controller.limit if controller is not None else None
        rules = {k: getattr(controller, k) for k in CAPACITY_RULES} if controller is not None else {}
        return JSONResponse(
            {
                "speech_decoder": {k: getattr(options, k) for k in RULES},
                "speech_tokenizer": {"max_wait_ms": wait_ms},
                "process": {"switch_interval_ms": sys.getswitchinterval() * 1000},
                "capacity": rules,
                "admission_limit": limit,
            }
        )

    @app.post("/bench/profile_gpu")
    async def profile_gpu(request: Request, body: dict) -> JSONResponse:
        import asyncio

        from glm4voice_api.pipeline.gpu_profile import profile_window

        seconds = float(body.get("seconds", 2.0))
        if not 0 < seconds <= 30:
            return JSONResponse({"error": "seconds must lie in (0, 30]"}, 400)
        decoder = _path(request.app.state.runtime, "decoder")
        if hasattr(decoder, "profile_gpu"):  # the decoder host, in vLLM's process: the LLM's kernels are there
            return JSONResponse(await decoder.profile_gpu(seconds))
        return JSONResponse(await asyncio.to_thread(profile_window, seconds))

    @app.post("/bench/profile_loop")
    async def profile_loop(body: dict) -> dict:
        """cProfile of the event loop's thread for `seconds`: where the API process's loop CPU goes under load.

        The handler runs on the loop thread, and cProfile profiles the thread that enables it, so everything the
        loop runs meanwhile (HTTP, SSE, vLLM's output handling, our turns) is counted; the worker threads are not."""
        import asyncio
        import cProfile
        import pstats

        seconds = float(body.get("seconds", 5.0))
        if not 0 < seconds <= 60:
            return JSONResponse({"error": "seconds must lie in (0, 60]"}, 400)
        profiler = cProfile.Profile()
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        profiler.enable()
        await asyncio.sleep(seconds)
        profiler.disable()
        cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
        stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, primitive, tottime, cumtime, callers)}
        rows = [
            {"function": f"{Path(f).name}:{line}:{name}", "calls": nc, "self_s": round(tt, 4), "cum_s": round(ct, 4)}
            for (f, line, name), (_, nc, tt, ct, _) in stats.items()
        ]
        top = int(body.get("top", 40))
        return {
            "seconds": round(wall, 3),
            "loop_cpu_s": round(cpu, 3),
            "by_self": sorted(rows, key=lambda r: -r["self_s"])[:top],
            "by_cum": sorted(rows, key=lambda r: -r["cum_s"])[:top],
        }

    @app.post("/bench/baseline")
    async def baseline(request: Request, body: dict) -> Any:
        import asyncio

        import torch

        from bench.baseline_seed import SeedBaseline
        from bench.loadgen import make_question_wav
        from glm4voice_api.audio.decode import decode_audio
        from glm4voice_api.models.speech_decoder.loader import load_speech_decoder

        rt = request.app.state.runtime
        if torch.cuda.is_available():  # the load levels before leave the caching allocator holding most memory
            torch.cuda.empty_cache()
        if "baseline" not in state:
            # The seed's decoder: its own float32, eager instance (no CUDA graphs, no batching).
            # Beside a decoder hosted in vLLM's process this one is the API process's only CUDA work, as in the
            # seed (its decoder in the server's process); its idle context stays for the overload that follows.
            device = torch.device(rt.settings.audio_device) if hosted(rt) else rt.decoder.decoder.device
            decoder = await asyncio.to_thread(load_speech_decoder, rt.paths.decoder, device, torch.float32)
            state["baseline"] = SeedBaseline(rt, decoder)
        clip = make_question_wav(float(body.get("question_seconds", 3.0)))
        wav = decode_audio(clip, format="wav", max_bytes=len(clip), max_seconds=60)
        turns = await state["baseline"].level(int(body["concurrency"]), wav, int(body.get("max_tokens", 390)))
        return {"turns": [{"arrivals": t.arrivals, "tokens": t.tokens, "error": t.error} for t in turns]}

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args()
    settings = Settings(host=args.host, port=args.port)
    logging.basicConfig(level=settings.log.level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(build(settings), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
