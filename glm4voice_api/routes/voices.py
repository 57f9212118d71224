"""POST/GET /v1/audio/voices and DELETE /v1/audio/voices/{voice_id} (the GET list is the peers' extension)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from glm4voice_api.protocol.voices import VoiceCreateRequest, VoiceDeleted, VoiceList, VoiceObject
from glm4voice_api.routes.admission import AdmittedDep
from glm4voice_api.routes.deps import ServicesDep, TenantDep
from glm4voice_api.routes.uploads import multipart_form, read_upload

router = APIRouter()


@router.post("/v1/audio/voices")
async def create_voice(
    body: Annotated[VoiceCreateRequest, multipart_form()],
    services: ServicesDep,
    tenant: TenantDep,
    _lease: AdmittedDep,  # model work (decoding, the speech tokenizer): admitted and limited like chat and speech
) -> VoiceObject:
    sample = await read_upload(body.audio_sample, services.voices.max_sample_bytes, param="audio_sample")
    return await services.voices.create_voice(body, sample, tenant)


@router.get("/v1/audio/voices")
async def list_voices(services: ServicesDep, tenant: TenantDep) -> VoiceList:
    return await services.voices.list_voices(tenant)


@router.delete("/v1/audio/voices/{voice_id}")
async def delete_voice(voice_id: str, services: ServicesDep, tenant: TenantDep) -> VoiceDeleted:
    return await services.voices.delete_voice(voice_id, tenant)
