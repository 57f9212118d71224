"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request

from glm4voice_api.protocol.chat import CHAT_RESPONSES, ChatCompletionRequest
from glm4voice_api.routes.admission import AdmittedDep
from glm4voice_api.routes.deps import RequestIdDep, ServicesDep, TenantDep
from glm4voice_api.routes.streaming import cancel_on_disconnect, sse_response

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None, responses=CHAT_RESPONSES)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    services: ServicesDep,
    request_id: RequestIdDep,
    tenant: TenantDep,
    _lease: AdmittedDep,  # held until the response (the stream included) has ended
):  # JSON or SSE: no return annotation
    # Streaming or not, the work before the first byte (audio decoded and tokenized) stops when the client leaves.
    result = await cancel_on_disconnect(request, services.chat.create_chat_completion(body, request_id, tenant))
    if body.stream:
        return sse_response(result)  # type: ignore[arg-type]
    return result
