"""The seed's serving pattern, reimplemented as the benchmark baseline (same process, same GPU, same engine).

What the seed (GLM-4-Voice's model_server.py + web_demo.py) does per spoken turn, and so what this does:
- ONE request at a time: the seed's model worker holds a lock around generation; here a FIFO lock around the
  whole turn, so concurrent users queue.
- The speech tokenizer at batch 1, then the LLM streams the reply. The LLM runs on vLLM through our engine
  adapter with one request at a time: stronger than the seed's transformers loop, so the ratio is conservative.
- The decoder is called inline as audio tokens arrive, with block sizes 25, 50, 100, 150, 200 (the last
  repeating), and every call re-runs the flow over the WHOLE history (all earlier tokens and mel as its prompt:
  `max_prompt_tokens=None`), at float32, eager (no CUDA graphs), one stream per call (no batching).

A turn records its audio chunks' arrivals like the load generator does (bench/loadgen.py): seconds since the turn
ARRIVED (so queueing behind other users counts, as it does for a user of the seed's demo) and seconds of audio in
the chunk. The suite judges them by the same rule as our path (bench/playback.py: playable latency <= 1 s).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from glm4voice_api.engine.base import GenerationParams
from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig
from glm4voice_api.text.prompt import AudioPart, UserMessage

SEED_SCHEDULE = (25, 50, 100, 150, 200)


@dataclass
class BaselineTurn:
    arrived: float
    arrivals: list[tuple[float, float]] = field(default_factory=list)
    """(seconds since the turn arrived, seconds of audio in the chunk), one per decoder call that produced audio."""
    tokens: int = 0
    error: str | None = None


class SeedBaseline:
    def __init__(self, runtime, decoder: SpeechDecoder) -> None:
        self.rt = runtime
        self.decoder = decoder
        self.lock = asyncio.Lock()  # asyncio.Lock is FIFO: users are served in arrival order
        self.config = DecoderStreamConfig(schedule=SEED_SCHEDULE, max_prompt_tokens=None)
        # One decoding thread, as the seed's request loop (and one cuBLAS handle, not one per pool thread).
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seed-decoder")

    async def turn(self, wav16k: np.ndarray, max_tokens: int) -> BaselineTurn:
        result = BaselineTurn(arrived=time.perf_counter())
        async with self.lock:
            tokens = await self.rt.audio_input.worker.tokenize(wav16k)
            prompt = self.rt.prompts.build([UserMessage(parts=(AudioPart(tuple(tokens)),))])
            ids = self.rt.tokenizer.ids
            params = GenerationParams(
                max_tokens=max_tokens,
                temperature=0.8,
                top_p=0.8,
                stop_token_ids=ids.stop_ids,
                constraint=self.rt.sampling.constraint(),
            )
            pending: asyncio.Queue[list[int] | None] = asyncio.Queue()

            async def produce() -> None:
                try:
                    request_id = f"baseline-{id(result)}"
                    async for delta in self.rt.engine.generate(prompt.token_ids, params, request_id):
                        result.tokens += len(delta.token_ids)
                        audio = [t - ids.audio_0 for t in delta.token_ids if t >= ids.audio_0]
                        if audio:
                            await pending.put(audio)
                finally:
                    await pending.put(None)

            producer = asyncio.create_task(produce())
            stream = self.decoder.open_stream(None, self.config)
            try:
                finished = False
                while not finished:
                    got = [await pending.get()]
                    while not pending.empty():
                        got.append(pending.get_nowait())
                    finished = got[-1] is None
                    new = [t for chunk in got if chunk for t in chunk]
                    # Inline, blocking the turn (the seed decodes in its request loop); a thread only keeps the
                    # event loop (and so the engine's output handling) alive meanwhile.
                    loop = asyncio.get_running_loop()
                    speech = await loop.run_in_executor(self.executor, stream.feed, new, finished)
                    if len(speech):
                        now = time.perf_counter() - result.arrived
                        result.arrivals.append((now, len(speech) / self.decoder.sample_rate))
            finally:
                stream.close()
                await producer
        return result

    async def level(self, concurrency: int, wav16k: np.ndarray, max_tokens: int) -> list[BaselineTurn]:
        """`concurrency` users each send one turn at the same moment; a turn that fails is returned with its error."""
        start = time.perf_counter()
        done = await asyncio.gather(
            *(self.turn(wav16k, max_tokens) for _ in range(concurrency)), return_exceptions=True
        )
        return [
            t if isinstance(t, BaselineTurn) else BaselineTurn(arrived=start, error=f"{type(t).__name__}: {t}"[:200])
            for t in done
        ]
