"""The speech decoder hosted in vLLM's model process, serving the API process over two ZeroMQ sockets.

Why: the API process and vLLM's engine-core process each hold a CUDA context, and without MPS the GPU time-slices
between the two: on an H100 a stream's first decoder pass took 286-325 ms beside a generating LLM, 56 ms with both
in one process; but with vLLM's engine in the API process the LLM's step loop waits for the GIL beside the event
loop and the decoder (bench/results/GPU.md, session 19). Here the decoder runs in the process that runs the model
(one CUDA context), and the API process keeps its event loop, HTTP and speech tokenizer to itself.

`start_host(spec)` is called in that process (vLLM's worker, through `collective_rpc` and our worker extension,
plugins/glm4voice_vllm/decoder_host.py) and returns at once; a thread of its own loads the decoder exactly as the
API process would (`runtime._build_scheduler`) and runs an asyncio loop that owns one `DecoderScheduler`, unchanged:
- commands in (PULL): ("open", sid, voice, live), ("tokens", sid, ids, final), ("close", sid), ("stop",);
- results out (PUSH): ("ready", info) or ("failed", text) once; ("audio", sid, float32 samples), ("end", sid),
  ("error", sid, text), ("closed", sid) per stream; ("underrun",) as they happen; ("stats", counters, passes)
  every `STATS_PERIOD_S` (the counters and pass log the API side's stand-in shows: pipeline/remote_decoder.py);
  ("stopped", reason) when its loop ends.
Messages are pickled tuples; both ends are our own code, on one machine (ipc:// paths made by the API process).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
from pathlib import Path
from typing import Any

from glm4voice_api.pipeline.remote_decoder import COUNTERS

logger = logging.getLogger(__name__)

STATS_PERIOD_S = 0.1
"""How often the counters go to the API side (its admission control reads them once a second)."""


def start_host(spec: dict) -> str:
    """Start the host thread (`spec`: settings as JSON, decoder_path, device, to_host, to_api); returns at once."""
    thread = threading.Thread(target=_run, args=(spec,), name="decoder-host", daemon=True)
    thread.start()
    return "started"


def _run(spec: dict) -> None:
    try:
        asyncio.run(_serve(spec))
    except Exception:
        logger.exception("the speech decoder host stopped on an error")


async def _serve(spec: dict) -> None:
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

    try:
        scheduler = await asyncio.to_thread(_build, spec)
    except Exception as exc:
        logger.exception("the speech decoder host could not load the decoder")
        await tx.send(pickle.dumps(("failed", f"{type(exc).__name__}: {exc}")))
        await asyncio.sleep(1)  # let the message leave before the context goes
        ctx.destroy(linger=1000)
        return
    scheduler.set_underrun_callback(lambda: loop.call_soon_threadsafe(send, "underrun"))
    send("ready", {"sample_rate": scheduler.sample_rate, "device": str(scheduler.decoder.device)})
    logger.info("speech decoder host ready on %s", scheduler.decoder.device)
    streams: dict[int, Any] = {}
    pumps: dict[int, asyncio.Task] = {}
    reporter = asyncio.create_task(_report(scheduler, send))
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
        for task in pumps.values():
            task.cancel()
        await scheduler.close()
        ctx.destroy(linger=0)


def _build(spec: dict) -> Any:
    from glm4voice_api.config import Settings
    from glm4voice_api.pipeline.runtime import _build_scheduler

    settings = Settings.model_validate_json(spec["settings"])
    # On a CUDA stream of its own, as with the in-process engine: its kernels may then overlap the LLM's.
    return _build_scheduler(settings, Path(spec["decoder_path"]), spec["device"], beside_model=True)


async def _pump(sid: int, stream: Any, send: Any) -> None:
    try:
        async for samples in stream.audio():
            send("audio", sid, samples)
        send("end", sid)
    except Exception as exc:  # noqa: BLE001 - the API side raises it for this stream
        send("error", sid, f"{type(exc).__name__}: {exc}")


async def _report(scheduler: Any, send: Any) -> None:
    sent = 0  # passes sent so far (the scheduler's `batches` counts them; its log keeps the latest)
    last: dict = {}
    while True:
        await asyncio.sleep(STATS_PERIOD_S)
        counters = {name: getattr(scheduler, name) for name in COUNTERS}
        counters["pass_seconds"] = scheduler.pass_seconds()
        if counters == last:  # idle: nothing to tell (the model's process has better things to do)
            continue
        last = counters
        new = counters["batches"] - sent
        log = list(scheduler.pass_log)
        passes = [tuple(p) for p in log[len(log) - min(new, len(log)) :]] if new > 0 else []
        sent = counters["batches"]
        send("stats", counters, passes)
