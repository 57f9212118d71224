"""GET /v1/realtime (WebSocket, the Realtime API) and POST /v1/realtime/client_secrets.

The auth middleware has already checked the key (Authorization header, or the `openai-insecure-api-key.` subprotocol
browsers use) and put the tenant, and any client secret, in the scope state.
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from glm4voice_api.errors import APIError
from glm4voice_api.protocol.realtime import ClientSecretRequest, ClientSecretResponse
from glm4voice_api.routes.deps import ServicesDep, TenantDep
from glm4voice_api.store import DEFAULT_TENANT

router = APIRouter()
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"


class WebSocketChannel:
    """The session's transport over Starlette's WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self.ws = websocket

    async def receive(self) -> str | bytes | None:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        return text if text is not None else message.get("bytes") or b""

    async def send(self, text: str) -> None:
        await self.ws.send_text(text)

    async def close(self, code: int, reason: str) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            try:
                await self.ws.close(code, reason[:120])
            except (RuntimeError, WebSocketDisconnect):
                pass


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, model: str | None = None) -> None:
    services = getattr(websocket.app.state, "services", None)
    if services is None or websocket.app.state.draining:
        await websocket.close(1013, "The server is starting up or shutting down; retry.")
        return
    offered = websocket.scope.get("subprotocols") or []
    beta = websocket.headers.get("openai-beta", "").startswith("realtime") or BETA_SUBPROTOCOL in offered
    state = websocket.scope.get("state", {})
    channel = WebSocketChannel(websocket)
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
    service = services.realtime
    try:
        service.check_model(model)
        config = await service.new_config(state.get("client_secret"))
    except APIError as error:
        await channel.send(service.error_text(error, beta))
        await channel.close(1008, error.code or "error")
        return
    try:
        await service.serve(channel, tenant=state.get("tenant") or DEFAULT_TENANT, beta=beta, config=config)
    finally:
        await channel.close(1000, "")


@router.post("/v1/realtime/client_secrets")
async def create_client_secret(
    body: ClientSecretRequest, services: ServicesDep, tenant: TenantDep
) -> ClientSecretResponse:
    """A short-lived secret (`ek_...`) a browser can open a Realtime session with, as this tenant."""
    return await services.realtime.create_client_secret(body, tenant)
