"""Liveness (/health), readiness (/health/ready) and Prometheus metrics (/metrics)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from glm4voice_api.routes.deps import ServicesDep
from glm4voice_api.serving.health import metrics_payload, probe_engine, probe_store

router = APIRouter()


@router.get("/health")
async def health(services: ServicesDep) -> JSONResponse:
    ok, detail = await probe_engine(services)
    return JSONResponse({"status": "ok" if ok else "error", "detail": detail}, status_code=200 if ok else 503)


@router.get("/health/ready")
async def ready(request: Request, services: ServicesDep) -> JSONResponse:
    ok, detail = await probe_engine(services)
    if ok:
        ok, detail = await probe_store(services)
    draining = getattr(request.app.state, "draining", False)
    ready_now = ok and not draining
    status = "ready" if ready_now else ("draining" if draining else "error")
    return JSONResponse({"status": status, "detail": detail}, status_code=200 if ready_now else 503)


@router.get("/metrics", response_class=PlainTextResponse)  # documents the Prometheus text format
async def metrics(request: Request) -> Response:
    body, content_type = metrics_payload(request.app.state.metrics)
    return Response(body, media_type=content_type)
