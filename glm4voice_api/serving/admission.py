"""Admission: per-tenant limits, then a global bounded queue in front of what the engine and decoder can serve.

Order of checks for a request that will run model work (chat, speech, transcription):

1. draining (SIGTERM received): 503 `server_shutting_down`.
2. tenant concurrency (requests running or queued, counted in this process, so per replica): 429
   `rate_limit_exceeded`. Checked before the rate window so that a refused request does not use up the window.
3. tenant requests per minute, through the store (fixed 60 s windows, shared by replicas on one Redis):
   429 `rate_limit_exceeded`, Retry-After = seconds to the window's end.
4. global admission: at most `max_active` requests run; up to `max_queued` more wait (first come, first served) at
   most `max_wait_s`; a full queue or an expired wait is 429 `server_overloaded` with Retry-After.

The returned `Lease` is held for the whole life of the response (the route holds it until the response, streamed
or not, has ended or its client has gone) and released exactly once. Draining can abort every lease: the request's
generation loop (`serving.deadlines.bounded`) then ends with a 503 `server_shutting_down`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable

from glm4voice_api.config import AdmissionSettings, TenantLimitSettings
from glm4voice_api.errors import APIError, shutting_down, too_many_requests
from glm4voice_api.store import Store

logger = logging.getLogger(__name__)

WINDOW_S = 60


class Lease:
    """One admitted request: its global slot and tenant count, released once; abortable while it runs."""

    def __init__(self, tenant: str, on_release: Callable[[Lease], None]) -> None:
        self.tenant = tenant
        self._on_release: Callable[[Lease], None] | None = on_release
        self.abort_error: APIError | None = None
        self._timeouts: set[asyncio.Timeout] = set()

    @property
    def released(self) -> bool:
        return self._on_release is None

    def release(self) -> None:
        """Synchronous and idempotent: it runs in `finally` blocks that may be cancelled at any await."""
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release(self)

    def abort(self, error: APIError) -> None:
        """End the request's generation now with `error` (drain): every wait it is in times out at once."""
        self.abort_error = error
        loop_time = asyncio.get_running_loop().time()
        for timeout in list(self._timeouts):
            if not timeout.expired():
                timeout.reschedule(loop_time)

    def watch(self, timeout: asyncio.Timeout) -> None:
        self._timeouts.add(timeout)

    def unwatch(self, timeout: asyncio.Timeout) -> None:
        self._timeouts.discard(timeout)


class AdmissionQueue:
    """At most `max_active` holders; up to `max_queued` waiters, served in order, each waiting at most `max_wait_s`.

    A released slot passes straight to the first waiter (it never becomes free in between), so a burst cannot
    overtake the queue. `max_active` None: unlimited (no queue at all).
    """

    def __init__(self, max_active: int | None, max_queued: int, max_wait_s: float) -> None:
        self.max_active = max_active
        self.max_queued = max_queued
        self.max_wait_s = max_wait_s
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed: APIError | None = None

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    @property
    def retry_after(self) -> int:
        return max(1, min(30, math.ceil(self.max_wait_s)))

    async def acquire(self, on_reject: Callable[[str], None] = lambda _reason: None) -> None:
        """Take a slot, waiting in the queue if need be; APIError 429 (full or waited too long) or 503 (closed)."""
        if self._closed is not None:
            on_reject("draining")
            raise self._closed
        if self.max_active is None or (self.active < self.max_active and not self.queued):
            self.active += 1
            return
        if self.queued >= self.max_queued:
            on_reject("queue_full")
            raise too_many_requests(
                f"The server is at capacity ({self.active} requests running, {self.queued} waiting); "
                "retry after the time in Retry-After.",
                "server_overloaded",
                self.retry_after,
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.max_wait_s):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                return  # the slot arrived just as the wait ran out: keep it
            self._forget(waiter)
            on_reject("queue_timeout")
            raise too_many_requests(
                f"The server is at capacity: no slot became free within {self.max_wait_s:g} s; retry after the "
                "time in Retry-After.",
                "server_overloaded",
                self.retry_after,
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # handed a slot, but the caller is gone: pass it on
            else:
                self._forget(waiter)
            raise
        except APIError:
            on_reject("draining")  # closed while waiting
            raise

    def set_limit(self, max_active: int) -> None:
        """A new limit (capacity control): a higher one admits waiters at once; a lower one takes effect as running
        requests end (nothing running is stopped)."""
        self.max_active = max_active
        while self._waiters and self.active < max_active:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.active += 1

    def release(self) -> None:
        if self.max_active is not None and self.active > self.max_active:
            self.active -= 1  # the limit was lowered: this slot goes away instead of to a waiter
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter: `active` is unchanged
                return
        self.active -= 1

    def close(self, error: APIError) -> None:
        """Refuse new requests with `error` and fail every waiter with it (drain)."""
        self._closed = error
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass


class TenantLimits:
    """Per-tenant concurrency (in this process) and requests per minute (through the store, shared by replicas)."""

    def __init__(
        self,
        store: Store,
        max_concurrent: int | None,
        requests_per_minute: int | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.max_concurrent = max_concurrent or None
        self.requests_per_minute = requests_per_minute or None
        self.clock = clock
        self.running: dict[str, int] = {}

    def enter(self, tenant: str) -> None:
        count = self.running.get(tenant, 0)
        if self.max_concurrent is not None and count >= self.max_concurrent:
            raise too_many_requests(
                f"Too many concurrent requests: at most {self.max_concurrent} at a time for your organization; "
                "retry when one has finished.",
                "rate_limit_exceeded",
                1,
            )
        self.running[tenant] = count + 1

    def leave(self, tenant: str) -> None:
        count = self.running.get(tenant, 0) - 1
        if count > 0:
            self.running[tenant] = count
        else:
            self.running.pop(tenant, None)

    async def count_request(self, tenant: str) -> None:
        if self.requests_per_minute is None:
            return
        now = self.clock()
        window_start = int(now // WINDOW_S) * WINDOW_S
        try:
            count = await self.store.count_request(tenant, window_start, 2 * WINDOW_S)
        except Exception:  # an unreachable store must not take the API down with it: fail open
            logger.warning("rate-limit window could not be counted; request let through", exc_info=True)
            return
        if count > self.requests_per_minute:
            retry_after = max(1, math.ceil(window_start + WINDOW_S - now))
            raise too_many_requests(
                f"Rate limit reached: {self.requests_per_minute} requests per minute for your organization; "
                f"retry in {retry_after} s.",
                "rate_limit_exceeded",
                retry_after,
            )


class Admission:
    """The checks in the module docstring, in order, and the registry of live leases (for drain)."""

    def __init__(
        self,
        queue: AdmissionQueue,
        tenants: TenantLimits,
        on_reject: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        self.queue = queue
        self.tenants = tenants
        self.on_reject = on_reject
        self.leases: set[Lease] = set()
        self.draining = False

    @classmethod
    def from_settings(
        cls,
        admission: AdmissionSettings,
        tenants: TenantLimitSettings,
        store: Store,
        on_reject: Callable[[str], None] = lambda _reason: None,
    ) -> Admission:
        """From resolved settings (`Settings.resolved`: `max_active` and `max_queued` are numbers; 0 = unlimited)."""
        if admission.max_active is None or admission.max_queued is None:
            msg = "admission settings must be resolved first (Settings.resolved)"
            raise ValueError(msg)
        return cls(
            AdmissionQueue(admission.max_active or None, admission.max_queued, admission.max_queue_wait_s),
            TenantLimits(store, tenants.max_concurrent, tenants.requests_per_minute),
            on_reject,
        )

    @property
    def in_flight(self) -> int:
        return len(self.leases)

    async def admit(self, tenant: str) -> Lease:
        if self.draining:
            self.on_reject("draining")
            raise shutting_down()
        try:
            self.tenants.enter(tenant)
        except APIError:
            self.on_reject("tenant_concurrency")
            raise
        try:
            try:
                await self.tenants.count_request(tenant)
            except APIError:
                self.on_reject("tenant_rate")
                raise
            await self.queue.acquire(self.on_reject)
        except BaseException:
            self.tenants.leave(tenant)
            raise
        lease = Lease(tenant, self._release)
        self.leases.add(lease)
        return lease

    def _release(self, lease: Lease) -> None:
        self.leases.discard(lease)
        self.tenants.leave(lease.tenant)
        self.queue.release()

    def start_draining(self) -> None:
        """New requests and every queued one get 503; running ones go on (until `abort_all`)."""
        self.draining = True
        self.queue.close(shutting_down())

    def abort_all(self, error: APIError) -> int:
        leases = list(self.leases)
        for lease in leases:
            lease.abort(error)
        return len(leases)
