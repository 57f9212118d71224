"""The services the routes use, built once per app from the runtime: each gets only the parts it uses."""

from __future__ import annotations

from dataclasses import dataclass

from glm4voice_api.engine.base import LLMEngine
from glm4voice_api.pipeline.decoder_pool import DecoderPool
from glm4voice_api.pipeline.decoder_scheduler import DecoderScheduler
from glm4voice_api.pipeline.runtime import Runtime
from glm4voice_api.serving.admission import Admission
from glm4voice_api.serving.chat import ServingChat
from glm4voice_api.serving.deadlines import TimeLimits
from glm4voice_api.serving.metrics import Metrics
from glm4voice_api.serving.models import ServingModels
from glm4voice_api.serving.realtime import ServingRealtime
from glm4voice_api.serving.replies import Replies
from glm4voice_api.serving.speech import ServingSpeech
from glm4voice_api.serving.transcription import ServingTranscription
from glm4voice_api.serving.voices import VoiceResolver
from glm4voice_api.serving.voices_api import ServingVoices
from glm4voice_api.store import Store


@dataclass
class Services:
    engine: LLMEngine
    """For the liveness probe."""
    chat: ServingChat
    models: ServingModels
    speech: ServingSpeech
    transcription: ServingTranscription
    voices: ServingVoices
    admission: Admission
    realtime: ServingRealtime
    store: Store
    """For the readiness probe."""
    decoder: DecoderScheduler | DecoderPool
    """For the liveness probe (`alive`)."""

    @classmethod
    def build(cls, rt: Runtime, metrics: Metrics) -> Services:
        settings = rt.settings
        limits = settings.request_limits
        time_limits = TimeLimits(settings.timeouts, metrics)
        replies = Replies(rt.engine, rt.tokenizer, rt.decoder, time_limits, metrics)
        voices = VoiceResolver(rt.store)
        admission = Admission.from_settings(settings.admission, settings.tenant_limits, rt.store, metrics.reject)
        realtime = ServingRealtime(
            rt.model,
            rt.tokenizer,
            rt.sampling,
            limits,
            settings.realtime,
            rt.audio_input,
            voices,
            rt.store,
            replies,
            admission,
            metrics,
        )
        rt.closers.append(realtime.close)
        return cls(
            engine=rt.engine,
            chat=ServingChat(
                rt.model,
                rt.prompts,
                rt.sampling,
                limits,
                rt.audio_input,
                voices,
                rt.store,
                replies,
                metrics,
                audio_ttl_seconds=settings.audio_ttl_seconds,
            ),
            models=ServingModels(rt.model),
            speech=ServingSpeech(rt.model, rt.prompts, rt.tokenizer, rt.sampling, voices, replies),
            transcription=ServingTranscription(
                rt.model, rt.prompts, rt.tokenizer, rt.sampling, limits, rt.audio_input, rt.engine, time_limits, metrics
            ),
            voices=ServingVoices(
                rt.store, limits, rt.audio_input, rt.voice_maker, max_voices=settings.tenant_limits.max_voices
            ),
            admission=admission,
            realtime=realtime,
            store=rt.store,
            decoder=rt.decoder,
        )
