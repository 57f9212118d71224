"""`create_app(settings)`: the FastAPI app, its lifespan (models + engine), middleware and error rendering."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glm4voice_api.auth import AuthMiddleware, KeyResolver
from glm4voice_api.config import Settings
from glm4voice_api.engine.base import EngineDeadError, LLMEngine
from glm4voice_api.errors import APIError, payload_too_large, server_error, shutting_down, store_unavailable
from glm4voice_api.logs import process_uptime_s
from glm4voice_api.pipeline.runtime import Runtime, build_runtime, capacity_key
from glm4voice_api.protocol.common import ErrorResponse
from glm4voice_api.protocol.validation import describe as describe_validation
from glm4voice_api.request_context import DEFAULT_TENANT, RequestContext, bind_request, unbind_request
from glm4voice_api.routes import chat, health, models, realtime, speech, transcription, voices, web
from glm4voice_api.routes.streaming import ClientDisconnectedError
from glm4voice_api.serving.admission import Admission
from glm4voice_api.serving.capacity import (
    CapacityController,
    CapacityMemory,
    capacity_signals,
    initial_limit,
    run_controller,
)
from glm4voice_api.serving.gc_heap import freeze_startup_heap, unfreeze_heap
from glm4voice_api.serving.loop_watch import LoopWatch
from glm4voice_api.serving.metrics import Metrics
from glm4voice_api.serving.services import Services
from glm4voice_api.store import StoreUnavailable

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("glm4voice_api.access")
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_OPEN_WHILE_DRAINING = ("/health", "/health/ready", "/metrics")


@dataclass
class _ResponseStatus:
    """The status the app sent (500 until it sends one), for the access log and the request counter."""

    status: int = 500


class RequestContextMiddleware:
    """Request id (`x-request-id`, taken from the client when sane), the body-size cap, the drain's 503, the request
    count and the access log line, as plain ASGI.

    Plain ASGI rather than BaseHTTPMiddleware: the latter breaks disconnect detection of streaming responses.
    The body cap is enforced on the bytes as they arrive, so a lying or absent Content-Length cannot get past it.
    The request context (id, and the tenant once the auth middleware has set it) is bound for the request's whole
    life, so every log line written while serving it carries both.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body: int,
        metrics: Metrics,
        body_idle_s: float | None = None,
        max_header_bytes: int | None = None,
        draining: Callable[[], bool] = lambda: False,
        tenant_label: Callable[[str], str] = lambda tenant: tenant,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.metrics = metrics
        self.body_idle_s = body_idle_s
        self.max_header_bytes = max_header_bytes
        self.draining = draining
        self.tenant_label = tenant_label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode(errors="replace") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID_OK.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        context = RequestContext(request_id, state)
        token = bind_request(context)
        started = time.perf_counter()
        response = _ResponseStatus()
        try:
            await self._handle(scope, receive, send, request_id, headers, response)
        finally:
            status = response.status
            self._count(scope, status, context.tenant)
            access_logger.info(
                "%s %s %s",
                scope.get("method"),
                scope.get("path"),
                status,
                extra={
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                },
            )
            unbind_request(token)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, headers: dict, response: _ResponseStatus
    ) -> None:
        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response.status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        if self.max_header_bytes and sum(len(k) + len(v) for k, v in scope.get("headers", ())) > self.max_header_bytes:
            # h11 refuses a head that grows past the cap while it arrives; one that came whole in a single read is
            # refused here, before anything (auth included) looks at it.
            await _send_error(
                send_with_id,
                APIError(
                    f"The request's headers are larger than the {self.max_header_bytes} byte limit.",
                    code="request_header_fields_too_large",
                    status=431,
                ),
            )
            return
        if self.draining() and scope.get("path") not in _OPEN_WHILE_DRAINING:
            # Readiness already answers 503, so balancers stop sending; whatever still arrives is told to retry.
            await _send_error(send_with_id, shutting_down())
            return
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            await _send_error(
                send_with_id,
                payload_too_large(f"The request body is larger than the {self.max_body} byte limit.", param="body"),
            )
            return
        received = 0
        body_done = False

        async def capped_receive() -> Message:
            nonlocal received, body_done
            if body_done or self.body_idle_s is None:
                message = await receive()  # after the body: waits for the client to go away, however long
            else:
                try:
                    # A client that stops sending its body would hold the request (and its connection) forever.
                    async with asyncio.timeout(self.body_idle_s):
                        message = await receive()
                except TimeoutError:
                    # An HTTPException: FastAPI passes it on from its body reading (any other error there is a 400).
                    raise StarletteHTTPException(
                        408, f"The request body stopped arriving for {self.body_idle_s:g} s."
                    ) from None
            if message["type"] == "http.request":
                body_done = not message.get("more_body", False)
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise APIError(
                        f"The request body is larger than the {self.max_body} byte limit.",
                        param="body",
                        code="request_too_large",
                        status=413,
                    )
            return message

        await self.app(scope, capped_receive, send_with_id)

    def _count(self, scope: Scope, status: int, tenant: str) -> None:
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.metrics.requests.labels(route=path, status=str(status), tenant=self.tenant_label(tenant)).inc()


def pseudonym(tenant: str) -> str:
    """A tenant's label on /metrics unless `auth.metrics_tenant_names`: stable (series per tenant stay apart, and
    an operator who knows the name can find its series), but an open /metrics does not list who the tenants are."""
    if tenant == DEFAULT_TENANT:
        return tenant
    return "t-" + hashlib.sha256(tenant.encode()).hexdigest()[:12]


async def _send_error(send: Send, error: APIError) -> None:
    response = JSONResponse(error.to_dict(), status_code=error.status, headers=error.headers)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _validation_error(exc: RequestValidationError) -> APIError:
    return describe_validation(list(exc.errors()))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def on_api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        error = _validation_error(exc)
        return JSONResponse(error.to_dict(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 400 here is Starlette failing to parse the body (bad UTF-8 JSON, nesting, multipart without boundary).
        kind = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout"}.get(
            exc.status_code
        )
        error = APIError(str(exc.detail), code=kind, status=exc.status_code)
        return JSONResponse(error.to_dict(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(StoreUnavailable)
    async def on_store_unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        logger.warning("store unavailable: %s", exc)
        error = store_unavailable()
        return JSONResponse(error.to_dict(), status_code=error.status, headers=error.headers)

    @app.exception_handler(ClientDisconnectedError)
    async def on_disconnect(_: Request, __: ClientDisconnectedError) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "message": "client disconnected",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "client_disconnected",
                }
            },
            status_code=499,
        )

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error", exc_info=exc)
        error = server_error()
        return JSONResponse(error.to_dict(), status_code=error.status)


def _publish_error_envelope(app: FastAPI) -> None:
    """/openapi.json as the server behaves: FastAPI documents a 422 `HTTPValidationError` on every route, but every
    error here, validation included, is a 4xx/5xx in the OpenAI envelope (generated clients and fuzzers rely on it)."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            envelope = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(envelope.pop("$defs", {}))
            schemas["ErrorResponse"] = envelope
            ref = {"$ref": "#/components/schemas/ErrorResponse"}
            error = {"description": "OpenAI error envelope", "content": {"application/json": {"schema": ref}}}
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.setdefault("responses", {})
                    responses.pop("422", None)
                    responses.setdefault("4XX", error)
                    responses.setdefault("5XX", error)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _start_capacity_control(app: FastAPI, runtime: Runtime, admission: Admission) -> asyncio.Task | None:
    """Measured admission (`admission.measured`, on by default on a GPU): a controller adjusts the active limit."""
    settings = runtime.settings
    if not settings.admission.measured:
        return None
    ceiling = settings.engine.max_num_seqs or 1
    controller = CapacityController(ceiling=ceiling, initial=initial_limit(ceiling))
    # The knee measured before a restart, on this GPU with these settings (none: the initial guess).
    memory = CapacityMemory(settings.cache_dir / "capacity.json", capacity_key(runtime))
    logger.info(
        "admission: measured, from a limit of %d (capacity memory %s, key %s)",
        controller.limit,
        memory.path,
        memory.key,
    )
    if (knee := memory.load()) is not None:
        controller.restore(knee)
        logger.info("admission: knee %d remembered from an earlier run; limit %d", knee, controller.limit)
    app.state.capacity = controller
    read = capacity_signals(runtime.engine, runtime.decoder, admission.queue)
    return asyncio.create_task(run_controller(controller, read, admission.queue.set_limit, memory=memory))


async def _watch_engine(app: FastAPI, engine: LLMEngine, every_s: float = 1.0) -> None:
    """A dead engine (its process killed or crashed) never serves again: requests already get 503 at once, and this
    marks the app failed (`app.state.fatal`), which makes the server exit non-zero for a supervisor to restart it."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await engine.check_health()
        except EngineDeadError as exc:
            logger.critical("the engine is dead (%s): the server will exit", exc)
            app.state.fatal = f"engine dead: {exc}"
            return


def create_app(settings: Settings | None = None, *, engine: LLMEngine | None = None) -> FastAPI:
    """Build the app. The lifespan loads the models and starts (and warms up) the engine before serving."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await build_runtime(settings, engine=engine)
        metrics.bind(
            active_requests=runtime.engine.active_requests,
            aborted_requests=runtime.engine.aborted_requests,
            decoder_sessions=runtime.decoder.active_streams,
            # A decoder hosted in vLLM's model process reports that process's threads.
            model_process_threads=lambda: getattr(runtime.decoder, "host_thread_cpu_s", {}),
            solo_passes=lambda: getattr(runtime.decoder, "solo_passes", 0),  # only the host holds the LLM
        )
        auth.bind(runtime.store)  # before the services: never serve while auto auth cannot see the stored keys
        await auth.announce()
        services = Services.build(runtime, metrics)
        admission = services.admission
        metrics.bind_admission(
            admitted=lambda: admission.in_flight,
            queued=lambda: admission.queue.queued,
            limit=lambda: admission.queue.max_active or 0,
        )
        runtime.decoder.set_underrun_callback(metrics.underruns.inc)
        metrics.realtime_sessions.set_function(lambda: services.realtime.active_sessions)
        app.state.services = services
        app.state.runtime = runtime  # introspection only (bench/gpu_server.py); routes go through the services
        capacity = _start_capacity_control(app, runtime, admission)
        watchdog = asyncio.create_task(_watch_engine(app, runtime.engine))
        # Everything startup made is permanent (gc_heap.py says why); before the loop watch starts, so its own
        # 0.6-0.8 s collection (H100 server, ~1M objects) is not reported as a stalled loop and counted on /metrics.
        freeze_startup_heap()
        loop_watch = LoopWatch(
            stall_s=settings.log.slow_loop_s,
            observe_lag=metrics.loop_lag.observe,
            count_stall=metrics.loop_stalls.inc,
            add_cpu=metrics.loop_cpu.inc,
        )
        loop_watch.start()
        # Process-wide: how long a thread waiting for the GIL (the decoder's, launching ops) waits for a busy one.
        switch_interval, ours = sys.getswitchinterval(), settings.switch_interval_ms / 1000
        sys.setswitchinterval(ours)
        gc_pauses = metrics.gc_pauses
        app.state.gc_pauses = gc_pauses
        gc_pauses.start()  # after the freeze's own collection: serving's collections only
        logger.info(
            "ready: serving %s on %s:%s (process up %s s)",
            settings.served_model_name,
            settings.host,
            settings.port,
            process_uptime_s(),
        )
        try:
            yield
        finally:
            watchdog.cancel()
            loop_watch.stop()
            gc_pauses.stop()
            unfreeze_heap()
            if sys.getswitchinterval() == ours:  # unless changed meanwhile (another app in this process, a bench)
                sys.setswitchinterval(switch_interval)
            if capacity is not None:
                capacity.cancel()
            app.state.services = app.state.runtime = None
            auth.bind(None)
            await runtime.close()

    app = FastAPI(title="glm4voice-api", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.auth = auth = KeyResolver(settings)
    app.state.services = None
    app.state.runtime = None
    app.state.capacity = None
    app.state.gc_pauses = None
    app.state.draining = False
    app.state.fatal = None
    _install_error_handlers(app)
    _publish_error_envelope(app)
    routers = (chat, speech, transcription, voices, models, health, realtime)
    for router in (r.router for r in routers):
        app.include_router(router)
    if settings.web_demo:
        app.include_router(web.router)
    # Added before (so inside) the request-context middleware: 401s carry x-request-id and are counted; added after
    # any middleware that reads request.state.tenant (admission, rate limits), so the tenant is set before they run.
    app.add_middleware(AuthMiddleware, resolver=auth, protect_health_metrics=settings.auth.protect_health_metrics)
    app.add_middleware(
        RequestContextMiddleware,
        max_body=settings.request_limits.max_body_bytes,
        metrics=metrics,
        body_idle_s=settings.timeouts.body_idle_s,
        max_header_bytes=settings.request_limits.max_header_bytes,
        draining=lambda: app.state.draining,
        tenant_label=(lambda tenant: tenant) if settings.auth.metrics_tenant_names else pseudonym,
    )
    return app


async def drain(app: FastAPI) -> None:
    """Stop taking requests and let the running ones finish, aborting those still running after
    `timeouts.drain_s` (their engine requests are aborted and decoder sessions freed as on a disconnect).

    Readiness answers 503 from the first moment, new requests get 503 with Retry-After, queued ones too.
    """
    app.state.draining = True
    services: Services | None = app.state.services
    if services is None:
        return
    admission = services.admission
    admission.start_draining()
    timeout = app.state.settings.timeouts.drain_s
    logger.info("draining: %d request(s) in flight, waiting up to %g s", admission.in_flight, timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while admission.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.1)
    if admission.in_flight:
        logger.warning("drain timeout: aborting %d request(s)", admission.abort_all(shutting_down()))
        # An aborted request ends at its next step (its error event written, engine and decoder freed): bounded.
        deadline = loop.time() + 10
        while admission.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
    logger.info("drained: %d request(s) left", admission.in_flight)
