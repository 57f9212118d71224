"""The speech decoder hosted in vLLM's model process, serving the API process over two ZeroMQ sockets.

Why: the API process and vLLM's engine-core process each hold a CUDA context, and without MPS the GPU time-slices
between the two: on an H100 a stream's first decoder pass took 286-325 ms beside a generating LLM, 56 ms with both
in one process; but with vLLM's engine in the API process the LLM's step loop waits for the GIL beside the event
loop and the decoder (bench/results/GPU.md, session 19). Here the decoder runs in the process that runs the model
(one CUDA context), and the API process keeps its event loop and HTTP to itself. With `speech_tokenizer.in_engine`
the speech tokenizer runs here too (its batching worker, unchanged), and the API process then holds no CUDA context
at all: no time slicing between processes is left on the GPU.

`start_host(spec)` is called in that process (vLLM's worker, through `collective_rpc` and our worker extension,
plugins/glm4voice_vllm/decoder_host.py) and returns at once; a thread of its own loads the decoder exactly as the
API process would (`runtime._build_scheduler`) and runs an asyncio loop that owns one `DecoderScheduler`, unchanged:
- commands in (PULL): ("open", sid, voice, live), ("tokens", sid, ids, final), ("close", sid), ("stop",); with the
  tokenizer: ("tokenize", rid, 16 kHz float32 samples), ("tokenizer_wait", ms); the benchmarks' live decoder rules:
  ("rules", rid, speech_decoder settings as JSON); the benchmarks' burst profile: ("profile", rid, seconds);
- results out (PUSH): ("ready", info) or ("failed", text) once; ("audio", sid, float32 samples), ("end", sid),
  ("error", sid, text), ("closed", sid) per stream; ("underrun",) as they happen; ("stats", counters, passes)
  every `STATS_PERIOD_S` when they changed (the counters and pass log the API side's stand-in shows:
  pipeline/remote_decoder.py); ("tokenized", rid, ids) or ("untokenized", rid, text) per tokenize command;
  ("ruled", rid, None or the error's text) per rules command; ("profiled", rid, summary) per profile command
  (`gpu_profile.py`: this process's kernels by CUDA stream, the LLM's included);
  ("stopped", reason) when its loop ends.
Messages are pickled tuples; both ends are our own code, on one machine (ipc:// paths made by the API process).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import sys
import threading
import time
from pathlib import Path
from typing import Any

from glm4voice_api.pipeline.remote_decoder import COUNTERS

logger = logging.getLogger(__name__)

STATS_PERIOD_S = 0.1
"""How often the counters go to the API side (its admission control reads them once a second)."""


def start_host(spec: dict, llm_gate: Any = None) -> str:
    """Start the host thread; returns at once. `spec`: settings as JSON, decoder_path, device, to_host, to_api, and
    tokenizer_path (None: the API process tokenizes). `llm_gate`: holds the LLM's next step (pipeline/llm_pause.py)."""
    thread = threading.Thread(target=_run, args=(spec, llm_gate), name="decoder-host", daemon=True)
    thread.start()
    return "started"


def _run(spec: dict, llm_gate: Any) -> None:
    package = logging.getLogger("glm4voice_api")
    if not package.handlers and not logging.getLogger().handlers:  # vLLM's process: our lines reach its stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("(decoder host) %(levelname)s %(asctime)s %(name)s: %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
    try:
        asyncio.run(_serve(spec, llm_gate))
    except Exception:
        logger.exception("the speech decoder host stopped on an error")


async def _serve(spec: dict, llm_gate: Any) -> None:
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    rx, tx = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    for sock in (rx, tx):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
    rx.connect(spec["to_host"])
    tx.connect(spec["to_api"])
    loop = asyncio.get_running_loop()

    def send(*message: Any) -> None:  # on the loop thread only (ZeroMQ sockets are not thread-safe)
        tx.send(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL), copy=False)

    # Both models load at once (as in the API process): the tokenizer's weights beside the decoder's compile.
    builds = [asyncio.to_thread(_build, spec, llm_gate)]
    if spec.get("tokenizer_path"):
        builds.append(asyncio.to_thread(_build_tokenizer, spec))
    built = await asyncio.gather(*builds, return_exceptions=True)
    if failed := [b for b in built if isinstance(b, BaseException)]:
        logger.error("the speech decoder host could not load its models", exc_info=failed[0])
        for part in built:  # what did load is let go (a tokenizer worker's thread stops)
            if not isinstance(part, BaseException):
                await getattr(part, "worker", part).close()
        await tx.send(pickle.dumps(("failed", f"{type(failed[0]).__name__}: {failed[0]}")))
        await asyncio.sleep(1)  # let the message leave before the context goes
        ctx.destroy(linger=1000)
        return
    scheduler, audio_input = built[0], (built[1] if len(built) > 1 else None)
    worker = audio_input.worker if audio_input is not None else None
    scheduler.set_underrun_callback(lambda: loop.call_soon_threadsafe(send, "underrun"))
    info = {"sample_rate": scheduler.sample_rate, "device": str(scheduler.decoder.device)}
    send("ready", info | ({"tokens_per_second": audio_input.tokens_per_second} if audio_input is not None else {}))
    logger.info("speech decoder host ready on %s (speech tokenizer: %s)", info["device"], worker is not None)
    streams: dict[int, Any] = {}
    pumps: dict[int, asyncio.Task] = {}
    asked: set[asyncio.Task] = set()  # tokenize and rules requests
    reporter = asyncio.create_task(_report(scheduler, worker, send))
    reason = "stopped"
    try:
        while True:
            message = pickle.loads(await rx.recv())
            op = message[0]
            if op == "stop":
                break
            if op == "open":
                _, sid, voice, live = message
                try:
                    stream = scheduler.open_stream(voice, live=live)
                except Exception as exc:  # noqa: BLE001 - the stream fails, the host goes on
                    send("error", sid, f"{type(exc).__name__}: {exc}")
                    send("closed", sid)
                    continue
                streams[sid] = stream
                pumps[sid] = asyncio.create_task(_pump(sid, stream, send))
            elif op == "tokens":
                _, sid, ids, final = message
                if (stream := streams.get(sid)) is not None and not stream.closed:
                    stream.push(ids, final=final)
            elif op == "tokenize" and worker is not None:
                task = asyncio.create_task(_tokenize(worker, message[1], message[2], send))
                asked.add(task)
                task.add_done_callback(asked.discard)
            elif op in ("rules", "profile"):
                job = _rules(scheduler, *message[1:], send) if op == "rules" else _profile(*message[1:], send)
                task = asyncio.create_task(job)
                asked.add(task)
                task.add_done_callback(asked.discard)
            elif op == "tokenizer_wait" and worker is not None:
                try:
                    worker.set_max_wait_ms(message[1])
                except ValueError:  # checked by the sender; a bad value never stops the host
                    logger.warning("speech tokenizer wait %r refused", message[1])
            elif op == "close" and (stream := streams.pop(message[1], None)) is not None:
                stream.close()
                if (task := pumps.pop(message[1], None)) is not None:
                    task.cancel()  # a stream closed early never gets its end marker
                send("closed", message[1])
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        send("stopped", reason)  # the API side fails its open streams at once instead of waiting on them
        reporter.cancel()
        for stream in streams.values():
            stream.close()
        for task in [*pumps.values(), *asked]:
            task.cancel()
        await scheduler.close()
        if worker is not None:
            await worker.close()
        ctx.destroy(linger=0)


def _build(spec: dict, llm_gate: Any = None) -> Any:
    from glm4voice_api.config import Settings
    from glm4voice_api.pipeline.runtime import _build_scheduler

    settings = Settings.model_validate_json(spec["settings"])
    # vLLM's step loop runs in this process: the host's threads give the GIL back at the server's interval.
    sys.setswitchinterval(settings.switch_interval_ms / 1000)
    # On a CUDA stream of its own, as with the in-process engine: its kernels may then overlap the LLM's.
    return _build_scheduler(settings, Path(spec["decoder_path"]), spec["device"], beside_model=True, llm_gate=llm_gate)


def _build_tokenizer(spec: dict) -> Any:
    """The speech tokenizer and its batching worker, loaded as the API process loads them."""
    from glm4voice_api.config import Settings
    from glm4voice_api.pipeline.runtime import _load_audio_input

    return _load_audio_input(
        Settings.model_validate_json(spec["settings"]), Path(spec["tokenizer_path"]), beside_model=True
    )


async def _tokenize(worker: Any, rid: int, samples: Any, send: Any) -> None:
    try:
        ids = await worker.tokenize(samples)
    except Exception as exc:  # noqa: BLE001 - the API side raises it for this request
        send("untokenized", rid, f"{type(exc).__name__}: {exc}")
    else:
        send("tokenized", rid, ids)


async def _rules(scheduler: Any, rid: int, options_json: str, send: Any) -> None:
    """The benchmarks' live decoder rules (bench/gpu_server.py), as `apply_rules` gives them to a local decoder."""
    from glm4voice_api.config import SpeechDecoderSettings
    from glm4voice_api.pipeline.decoder_rules import apply_rules

    try:
        options = SpeechDecoderSettings.model_validate_json(options_json)
        await asyncio.to_thread(apply_rules, scheduler, options)  # may capture graphs: off the host's loop
    except Exception as exc:  # noqa: BLE001 - the API side raises it (open streams: a 409 there)
        send("ruled", rid, f"{type(exc).__name__}: {exc}")
    else:
        send("ruled", rid, None)


async def _profile(rid: int, seconds: float, send: Any) -> None:
    """The benchmarks' burst profile: every kernel of this process (LLM, decoder, tokenizer) for `seconds`."""
    from glm4voice_api.pipeline.gpu_profile import profile_window

    send("profiled", rid, await asyncio.to_thread(profile_window, seconds))  # never raises: errors are in it


async def _pump(sid: int, stream: Any, send: Any) -> None:
    try:
        async for samples in stream.audio():
            send("audio", sid, samples)
        send("end", sid)
    except Exception as exc:  # noqa: BLE001 - the API side raises it for this stream
        send("error", sid, f"{type(exc).__name__}: {exc}")


async def _report(scheduler: Any, worker: Any, send: Any) -> None:
    from glm4voice_api.pipeline.thread_cpu import thread_cpu_seconds

    sent = 0  # passes sent so far (the scheduler's `batches` counts them; its log keeps the latest)
    last: dict = {}
    cpu_sent, cpu_at = 0.0, 0.0
    while True:
        await asyncio.sleep(STATS_PERIOD_S)
        counters = {name: getattr(scheduler, name) for name in COUNTERS}
        counters["pass_seconds"] = scheduler.pass_seconds()
        counters["tokenizer_busy_seconds"] = worker.busy_seconds if worker is not None else 0.0
        counters["solo_passes"] = scheduler.llm_pause.passes
        # This process's threads (vLLM's step loop among them): how hard its GIL is contended. Sent with any change
        # of the counters, else at most once a second while they use CPU (vLLM generating text only).
        cpu = thread_cpu_seconds()
        now = time.monotonic()
        if counters == last and not (now - cpu_at >= 1 and sum(cpu.values()) - cpu_sent >= 0.01):
            continue  # idle: nothing to tell (the model's process has better things to do)
        last, cpu_sent, cpu_at = counters, sum(cpu.values()), now
        new = counters["batches"] - sent
        log = list(scheduler.pass_log)
        passes = [tuple(p) for p in log[len(log) - min(new, len(log)) :]] if new > 0 else []
        sent = counters["batches"]
        send("stats", counters | {"thread_cpu_s": cpu}, passes)
