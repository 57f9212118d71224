"""POST /v1/audio/speech."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from glm4voice_api.protocol.speech import SPEECH_RESPONSES, SpeechRequest
from glm4voice_api.routes.admission import AdmittedDep
from glm4voice_api.routes.deps import RequestIdDep, ServicesDep, TenantDep
from glm4voice_api.routes.streaming import cancel_on_disconnect, sse_response
from glm4voice_api.serving.speech import SpeechAudio

router = APIRouter()


@router.post("/v1/audio/speech", response_model=None, responses=SPEECH_RESPONSES)
async def create_speech(
    body: SpeechRequest,
    request: Request,
    services: ServicesDep,
    request_id: RequestIdDep,
    tenant: TenantDep,
    _lease: AdmittedDep,
):
    result = await cancel_on_disconnect(request, services.speech.create_speech(body, request_id, tenant))
    if isinstance(result, SpeechAudio):
        # Always streamed (chunked): the first encoded bytes go out while the rest is still being generated.
        return StreamingResponse(result.chunks, media_type=result.content_type)
    # OpenAI's speech SSE stream ends with speech.audio.done, without chat's [DONE] marker.
    return sse_response(result, done_marker=False)
