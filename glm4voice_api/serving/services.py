"""The set of services the routes use, built once per app from the runtime."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from glm4voice_api.pipeline.runtime import Runtime
from glm4voice_api.serving.admission import Admission
from glm4voice_api.serving.capacity import CapacitySignals
from glm4voice_api.serving.chat import ServingChat
from glm4voice_api.serving.models import ServingModels
from glm4voice_api.serving.speech import ServingSpeech
from glm4voice_api.serving.transcription import ServingTranscription
from glm4voice_api.serving.voices_api import ServingVoices


@dataclass
class Services:
    runtime: Runtime
    chat: ServingChat
    models: ServingModels
    speech: ServingSpeech
    transcription: ServingTranscription
    voices: ServingVoices
    admission: Admission

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> Services:
        return cls(
            runtime=runtime,
            chat=ServingChat(runtime),
            models=ServingModels(runtime),
            speech=ServingSpeech(runtime),
            transcription=ServingTranscription(runtime),
            voices=ServingVoices(runtime),
            admission=Admission.from_limits(
                runtime.settings.limits,
                runtime.engine.info.max_num_seqs,
                runtime.store,
                measured=measured_capacity(runtime),
            ),
        )


def measured_capacity(runtime: Runtime) -> bool:
    """Whether the admission limit is measured while serving (unset, on a GPU) rather than fixed."""
    return runtime.settings.limits.max_active_requests is None and runtime.engine.info.extra.get("device") == "cuda"


def capacity_signals(runtime: Runtime, admission: Admission) -> Callable[[], CapacitySignals]:
    """What the capacity controller reads: decoder and engine counters, the admission queue's counts."""
    engine, decoder = runtime.engine, runtime.decoder
    generated = getattr(engine, "generated_tokens", lambda: 0)

    def read() -> CapacitySignals:
        return CapacitySignals(
            at=time.monotonic(),
            underruns=decoder.settled_underruns,
            near_misses=decoder.near_misses,
            generated_tokens=generated(),
            engine_active=engine.active_requests(),
            active=admission.queue.active,
            queued=admission.queue.queued,
        )

    return read
