"""Bearer API keys -> tenants, as a plain ASGI middleware in front of the routes.

Plain ASGI (not BaseHTTPMiddleware, which breaks disconnect detection of streams). The tenant is put into the
request's scope state (`request.state.tenant`) before any inner middleware or handler runs, so admission, rate
limits and metrics further in can read it. Every request gets a tenant: `default` where no key is needed.

Keys come from two places: the static list in the settings (`--api-keys`, tenant `default`) and the store (hashed,
per tenant, managed by `glm4voice-api keys`). Store lookups are cached in memory for `auth.cache_seconds`, so a
revoked key keeps working on a running server for at most that long.
"""

from __future__ import annotations

import logging
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glm4voice_api.config import Settings
from glm4voice_api.errors import APIError, store_unavailable, unavailable
from glm4voice_api.store import DEFAULT_TENANT, Store, StoredClientSecret, StoreUnavailable, hash_api_key

logger = logging.getLogger(__name__)

OPEN_PROBES = ("/health", "/health/ready", "/metrics")
API_DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
"""The generated API description: guarded like /v1 (a key when auth is on), as it describes what the keys reach."""
REALTIME_PATH = "/v1/realtime"
CLIENT_SECRET_PREFIX = "ek_"
# Browsers cannot set headers on a WebSocket handshake: OpenAI's Realtime convention carries the key (a client
# secret, normally) as a subprotocol `openai-insecure-api-key.<key>` next to `realtime`.
SUBPROTOCOL_KEY_PREFIX = "openai-insecure-api-key."
_CACHE_MAX = 10_000
_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth "
    "(i.e. Authorization: Bearer YOUR_KEY)."
)


def _masked(key: str) -> str:
    return f"{key[:8]}***{key[-4:]}" if len(key) >= 20 else "***"


def invalid_key(key: str | None) -> APIError:
    message = _MISSING if not key else f"Incorrect API key provided: {_masked(key)}."
    return APIError(message, code="invalid_api_key", status=401, headers={"WWW-Authenticate": "Bearer"})


class KeyResolver:
    """Which tenant a key belongs to, and whether keys are required at all (`auth` = auto|on|off).

    Fails closed: in `auto`, once keys have been seen (configured or stored) auth stays on for the life of the
    process. A store that later answers "no keys" (Redis restarted empty, FLUSHDB, an evicted index) is reported as
    an error in the log, and every request still needs a key the store (or the settings) knows.
    """

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth.mode
        self.ttl = settings.auth.cache_seconds
        self.static = {hash_api_key(k): DEFAULT_TENANT for k in settings.auth.api_keys}
        self.store: Store | None = None
        self._tenants: dict[str, tuple[float, str | None]] = {}
        self._has_keys: tuple[float, bool] = (0.0, False)
        self._latched = False
        """auto mode: keys were seen once, so auth is on until the process exits."""

    def bind(self, store: Store | None) -> None:
        """Called by the lifespan once the store is open (None again at shutdown)."""
        self.store = store
        self._tenants.clear()
        self._has_keys = (0.0, False)

    async def announce(self) -> None:
        """Log, loudly, whether auth is on and why (once, at startup)."""
        if self.mode == "off":
            logger.warning(
                "AUTH OFF (--auth.mode off): every /v1 request is served as tenant '%s' without a key", DEFAULT_TENANT
            )
            return
        stored = await self.store.has_keys() if self.store is not None else False
        if self.mode == "on" and not self.static and not stored:
            logger.warning(
                "auth ON (--auth.mode on) but no key is configured or stored: every /v1 request is refused "
                "(401) until a key is created with `glm4voice-api keys create`"
            )
        elif self.mode == "on":
            logger.info("auth ON (--auth.mode on): /v1 requests need an API key")
        elif self.static or stored:
            self._latched = True
            why = f"{len(self.static)} static key(s) configured" if self.static else "API keys found in the store"
            logger.info(
                "auth ON (--auth.mode auto, %s): /v1 requests need an API key, for the life of this process", why
            )
        else:
            logger.warning(
                "AUTH OFF (--auth.mode auto, no API key configured or stored): every /v1 request is served as "
                "tenant '%s' without a key. It switches on, for good, once a key is created; use "
                "--auth.mode on for a hosted deployment.",
                DEFAULT_TENANT,
            )

    async def required(self) -> bool:
        if self.mode != "auto":
            return self.mode == "on"
        if self.static:
            return True
        if self.store is None:
            return self._latched  # starting up or shutting down: the routes answer 503 anyway
        # Re-checked every ttl, so a key created on a running server turns auth on without a restart.
        expires, known = self._has_keys
        if time.monotonic() >= expires:
            known = await self.store.has_keys()
            self._has_keys = (time.monotonic() + self.ttl, known)
            if known and not self._latched:
                logger.warning("auth switched ON: API keys appeared in the store; it stays on for this process")
            elif not known and self._latched:
                logger.error(
                    "the store holds no API keys although it had some (emptied, flushed or evicted?); "
                    "auth stays ON: requests need a key the store knows"
                )
        self._latched = self._latched or known
        return self._latched

    async def client_secret(self, key: str) -> StoredClientSecret | None:
        """A Realtime client secret (`ek_...`) that exists and has not expired (never cached: they are short-lived)."""
        if self.store is None:
            raise unavailable("The server is starting up.")
        return await self.store.get_client_secret(hash_api_key(key), int(time.time()))

    async def tenant(self, key: str) -> str | None:
        """The key's tenant; None for an unknown or revoked key."""
        key_hash = hash_api_key(key)
        if key_hash in self.static:
            return self.static[key_hash]
        if self.store is None:
            raise unavailable("The server is starting up.")
        now = time.monotonic()
        cached = self._tenants.get(key_hash)
        if cached is not None and now < cached[0]:
            return cached[1]
        record = await self.store.find_key(key_hash)
        tenant = record.tenant if record is not None else None
        if len(self._tenants) >= _CACHE_MAX:  # unknown keys are cached too: bound what guessing can fill
            self._tenants.clear()
        self._tenants[key_hash] = (now + self.ttl, tenant)
        return tenant


def bearer_key(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None


def subprotocol_key(scope: Scope) -> str | None:
    for protocol in scope.get("subprotocols", ()) or ():
        if protocol.startswith(SUBPROTOCOL_KEY_PREFIX) and len(protocol) > len(SUBPROTOCOL_KEY_PREFIX):
            return protocol[len(SUBPROTOCOL_KEY_PREFIX) :]
    return None


class AuthMiddleware:
    """Checks the Bearer key on /v1 and the API docs (and on the probes when `protect_health_metrics`); sets the
    tenant."""

    def __init__(self, app: ASGIApp, resolver: KeyResolver, protect_health_metrics: bool) -> None:
        self.app = app
        self.resolver = resolver
        self.protect_probes = protect_health_metrics

    def _guarded(self, path: str) -> bool:
        if path == "/v1" or path.startswith("/v1/") or path in API_DOCS:
            return True
        return self.protect_probes and path in OPEN_PROBES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["tenant"] = DEFAULT_TENANT
        if self._guarded(scope["path"]):
            try:
                await self._authenticate(scope, state)
            except APIError as error:
                await _reject(scope, send, error)
                return
            except StoreUnavailable as exc:  # keys cached before the outage keep working; others are told to retry
                logger.warning("API key lookup failed: %s", exc)
                await _reject(scope, send, store_unavailable())
                return
            except Exception:  # the key store failing is the server's problem, and retryable: 503
                logger.exception("API key lookup failed")
                await _reject(scope, send, unavailable("The API key store is unavailable; try again shortly."))
                return
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope, state: dict) -> None:
        websocket = scope["type"] == "websocket"
        key = bearer_key(scope) or (subprotocol_key(scope) if websocket else None)
        if key and key.startswith(CLIENT_SECRET_PREFIX):
            # A client secret opens Realtime sessions only (never other routes, nor more secrets), as the tenant
            # that created it, with the session settings it was created with.
            secret = await self.resolver.client_secret(key) if websocket and scope["path"] == REALTIME_PATH else None
            if secret is not None:
                state["tenant"] = secret.tenant
                state["client_secret"] = secret
                return
        if await self.resolver.required():
            tenant = await self.resolver.tenant(key) if key and not key.startswith(CLIENT_SECRET_PREFIX) else None
            if tenant is None:
                raise invalid_key(key)
            state["tenant"] = tenant


async def _reject(scope: Scope, send: Send, error: APIError) -> None:
    if scope["type"] == "websocket":
        if "websocket.http.response" in scope.get("extensions", {}):
            # The handshake is answered with the HTTP status and the OpenAI envelope, as OpenAI's server does.
            body = JSONResponse(error.to_dict()).body
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
            await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
            return
        # Before accept: closing makes the server answer the handshake with 403 (1008 = policy violation).
        await send({"type": "websocket.close", "code": 1008, "reason": error.message[:120]})
        return
    response = JSONResponse(error.to_dict(), status_code=error.status, headers=error.headers)
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
