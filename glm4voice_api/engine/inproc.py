"""vLLM's engine core inside the server process, stepped by one thread, behind the subset of `AsyncLLM` we use.

Why: `AsyncLLM` always runs the engine core (and, on one GPU, the model) in a process of its own. The speech decoder
then shares the GPU with it from another process, and without MPS the GPU time-slices between the two contexts: on
an H100 every decoder pass took ~3x its stand-alone time beside a generating LLM, and the LLM lost a quarter of its
speed (bench/results). In one process both share one CUDA context, so their kernels interleave and overlap instead
of taking turns, and the decoder can run on a CUDA stream of its own.

One thread owns vLLM's `LLMEngine` (in-process `EngineCore`, uni executor): it takes add/abort commands from a queue
between steps, steps while requests are unfinished, and hands each request's `RequestOutput`s (DELTA) to the asyncio
queue of the coroutine that asked. The event loop never runs model work. Only for one GPU (tensor/pipeline/data
parallel engines need vLLM's own processes); only imported by `vllm_engine.py` (vLLM stays behind the adapter).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any

logger = logging.getLogger(__name__)


class InprocEngineDead(RuntimeError):
    """The engine thread stopped on an error; every request after it fails."""


class InprocAsyncLLM:
    """`generate`, `abort`, `check_health`, `errored` and `shutdown` as `AsyncLLM` offers them."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}  # engine thread only
        self.dead_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="vllm-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_args(cls, args: Any, usage_context: Any) -> InprocAsyncLLM:
        from vllm.v1.engine.llm_engine import LLMEngine
        from vllm.v1.executor import Executor

        config = args.create_engine_config(usage_context)
        engine = LLMEngine(
            vllm_config=config,
            executor_class=Executor.get_class(config),
            log_stats=not args.disable_log_stats,
            usage_context=usage_context,
            multiprocess_mode=False,
        )
        return cls(engine)

    @property
    def errored(self) -> bool:
        return self.dead_error is not None or not self._thread.is_alive()

    async def generate(self, prompt: Any, sampling: Any, request_id: str) -> AsyncIterator[Any]:
        if self.errored:
            raise InprocEngineDead(f"the engine thread stopped: {self.dead_error}")
        out: asyncio.Queue = asyncio.Queue()
        self._commands.put(("add", request_id, prompt, sampling, asyncio.get_running_loop(), out))
        finished = False
        try:
            while True:
                item = await out.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:  # the consumer left (disconnect, limit): free the engine's slot
                self._commands.put(("abort", request_id))

    async def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    async def check_health(self) -> None:
        if self.errored:
            raise InprocEngineDead(f"the engine thread stopped: {self.dead_error}")

    def shutdown(self) -> None:
        self._commands.put(("stop",))
        self._thread.join(60)
        try:
            self._engine.engine_core.shutdown()
        except Exception:  # best effort at exit
            logger.debug("engine core shutdown failed", exc_info=True)

    # -- engine thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        engine = self._engine
        try:
            while True:
                busy = engine.has_unfinished_requests()
                for command in self._drain(block=not busy):
                    if command[0] == "stop":
                        return
                    self._apply(command)
                if engine.has_unfinished_requests():
                    self._deliver(engine.step())
        except BaseException as exc:  # recorded; every waiting request is told
            logger.exception("the in-process engine stopped")
            self.dead_error = exc
            for loop, out in self._streams.values():
                _send(loop, out, InprocEngineDead(f"the engine stopped: {exc}"))
            self._streams.clear()

    def _drain(self, *, block: bool) -> list:
        commands = [self._commands.get()] if block else []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _apply(self, command: tuple) -> None:
        if command[0] == "abort":
            if self._streams.pop(command[1], None) is not None:
                self._engine.abort_request([command[1]])
            return
        _, request_id, prompt, sampling, loop, out = command
        try:
            self._engine.add_request(request_id, prompt, sampling)
        except Exception as exc:  # noqa: BLE001 - a rejected request fails alone (ValueError: bad request)
            _send(loop, out, exc)
            return
        self._streams[request_id] = (loop, out)

    def _deliver(self, outputs: list[Any]) -> None:
        """A step's outputs, handed to each event loop in ONE callback (per loop, in order): a wake-up of the loop
        per request per step would cost it (and the GIL, shared with the decoder's thread) ~32x more at 32
        streams."""
        batches: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Any]]] = {}
        for output in outputs:
            target = self._streams.get(output.request_id)
            if target is None:
                continue  # aborted meanwhile
            if output.finished:
                del self._streams[output.request_id]
            loop, out = target
            batches.setdefault(loop, []).append((out, output))
        for loop, items in batches.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed: nobody is listening
                pass


def _put_all(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for out, item in items:
        out.put_nowait(item)


def _send(loop: asyncio.AbstractEventLoop, out: asyncio.Queue, item: object) -> None:
    try:
        loop.call_soon_threadsafe(out.put_nowait, item)
    except RuntimeError:  # that request's event loop is closed: nobody is listening
        pass
