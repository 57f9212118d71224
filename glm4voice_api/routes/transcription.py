"""POST /v1/audio/transcriptions and /v1/audio/translations (multipart)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from glm4voice_api.protocol.transcription import (
    TRANSCRIPTION_RESPONSES,
    TRANSLATION_RESPONSES,
    TranscriptionRequest,
    TranslationRequest,
)
from glm4voice_api.routes.admission import AdmittedDep
from glm4voice_api.routes.deps import RequestIdDep, ServicesDep
from glm4voice_api.routes.streaming import cancel_on_disconnect, sse_response
from glm4voice_api.routes.uploads import multipart_form, read_upload

router = APIRouter()


@router.post("/v1/audio/transcriptions", response_model=None, responses=TRANSCRIPTION_RESPONSES)
async def create_transcription(
    body: Annotated[TranscriptionRequest, multipart_form()],
    request: Request,
    services: ServicesDep,
    request_id: RequestIdDep,
    _lease: AdmittedDep,
):
    return await _transcribe(body, request, services, request_id, stream=bool(body.stream))


@router.post("/v1/audio/translations", response_model=None, responses=TRANSLATION_RESPONSES)
async def create_translation(
    body: Annotated[TranslationRequest, multipart_form()],
    request: Request,
    services: ServicesDep,
    request_id: RequestIdDep,
    _lease: AdmittedDep,
):
    return await _transcribe(body, request, services, request_id, stream=False)


async def _transcribe(
    body: TranscriptionRequest | TranslationRequest,
    request: Request,
    services: ServicesDep,
    request_id: str,
    *,
    stream: bool,
):
    """Both routes: read the upload, then one serving call (translations are transcriptions into English)."""
    service = services.transcription
    audio = await read_upload(body.file, service.max_audio_bytes, param="file")
    result = await cancel_on_disconnect(request, service.create_transcription(body, audio, request_id))
    if stream:
        # OpenAI's transcription stream ends with transcript.text.done, without a [DONE] marker.
        return sse_response(result, done_marker=False)  # type: ignore[arg-type]
    if isinstance(result, str):
        return PlainTextResponse(result)
    return result
