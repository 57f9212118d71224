"""DecoderPool: several decoder schedulers (one per GPU) behind the one-scheduler interface."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.pipeline.decoder_scheduler import DecoderScheduler
from glm4voice_api.pipeline.scheduled_stream import ScheduledStream

__all__ = ["DecoderPool"]


class DecoderPool:
    """Several `DecoderScheduler`s, one per device (`--audio-device all`: one per GPU), behind one interface.

    Why: with vLLM spread over several GPUs (tensor or data parallel), a single decoder would leave the other GPUs'
    share of the speech work undone. A new stream goes to the scheduler with the fewest open sessions, and stays
    there (its state lives on that device).
    """

    def __init__(self, schedulers: list[DecoderScheduler]) -> None:
        if not schedulers:
            raise ValueError("a decoder pool needs at least one scheduler")
        self.schedulers = schedulers
        self.decoder = schedulers[0].decoder  # voice creation and introspection use the first device's model
        self.sample_rate = schedulers[0].sample_rate

    def start(self) -> None:
        for scheduler in self.schedulers:
            scheduler.start()

    @property
    def alive(self) -> bool:
        return all(s.alive for s in self.schedulers)

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self.schedulers))

    def open_stream(self, voice: Voice | None = None, *, live: bool = False) -> ScheduledStream:
        return min(self.schedulers, key=DecoderScheduler.active_streams).open_stream(voice, live=live)

    def active_streams(self) -> int:
        return sum(s.active_streams() for s in self.schedulers)

    def set_underrun_callback(self, callback: Callable[[], None]) -> None:
        for s in self.schedulers:
            s.on_underrun = callback

    @property
    def batches(self) -> int:
        return sum(s.batches for s in self.schedulers)

    @property
    def chunks(self) -> int:
        return sum(s.chunks for s in self.schedulers)

    @property
    def underruns(self) -> int:
        return sum(s.underruns for s in self.schedulers)

    @property
    def settled_underruns(self) -> int:
        return sum(s.settled_underruns for s in self.schedulers)

    @property
    def near_misses(self) -> int:
        return sum(s.near_misses for s in self.schedulers)

    @property
    def busy_seconds(self) -> float:
        """Summed over devices (so it can exceed the wall time: the devices work in parallel)."""
        return sum(s.busy_seconds for s in self.schedulers)
