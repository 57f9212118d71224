"""Admission queue, tenant limits, leases and time limits, on their own (fake store and clock; no server)."""

from __future__ import annotations

import asyncio

import pytest

from glm4voice_api.config import AdmissionSettings, Settings, TenantLimitSettings, TimeoutSettings
from glm4voice_api.errors import APIError, shutting_down
from glm4voice_api.request_context import RequestContext, bind_request, unbind_request
from glm4voice_api.serving.admission import Admission, AdmissionQueue, TenantLimits
from glm4voice_api.serving.deadlines import TimeLimits
from glm4voice_api.serving.metrics import Metrics


class FakeStore:
    def __init__(self, fail: bool = False) -> None:
        self.windows: dict[tuple[str, int], int] = {}
        self.fail = fail

    async def count_request(self, tenant: str, window_start: int, ttl_s: int) -> int:
        if self.fail:
            raise ConnectionError("store down")
        key = (tenant, window_start)
        self.windows[key] = self.windows.get(key, 0) + 1
        return self.windows[key]


def _retry_after(exc: APIError) -> int:
    assert exc.headers is not None
    return int(exc.headers["Retry-After"])


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_queue_admits_up_to_max_then_queues_then_refuses() -> None:
    reasons: list[str] = []
    queue = AdmissionQueue(max_active=1, max_queued=1, max_wait_s=30)
    await queue.acquire(reasons.append)
    waiting = asyncio.ensure_future(queue.acquire(reasons.append))
    await _settle()
    assert queue.active == 1 and queue.queued == 1 and not waiting.done()
    with pytest.raises(APIError) as refused:
        await queue.acquire(reasons.append)
    assert refused.value.status == 429 and refused.value.code == "server_overloaded"
    assert _retry_after(refused.value) >= 1
    assert reasons == ["queue_full"]
    queue.release()  # the slot passes straight to the waiter
    await waiting
    assert queue.active == 1 and queue.queued == 0
    queue.release()
    assert queue.active == 0


async def test_queue_serves_waiters_in_order() -> None:
    queue = AdmissionQueue(max_active=1, max_queued=3, max_wait_s=30)
    await queue.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        await queue.acquire()
        order.append(i)

    tasks = [asyncio.ensure_future(wait(i)) for i in range(3)]
    await _settle()
    for _ in range(3):
        queue.release()
        await _settle()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


async def test_queue_wait_expires_with_429() -> None:
    reasons: list[str] = []
    queue = AdmissionQueue(max_active=1, max_queued=4, max_wait_s=0.05)
    await queue.acquire()
    with pytest.raises(APIError) as expired:
        await queue.acquire(reasons.append)
    assert expired.value.status == 429 and expired.value.code == "server_overloaded"
    assert reasons == ["queue_timeout"] and queue.queued == 0 and queue.active == 1


async def test_cancelled_waiter_gives_up_its_place() -> None:
    queue = AdmissionQueue(max_active=1, max_queued=2, max_wait_s=30)
    await queue.acquire()
    gone = asyncio.ensure_future(queue.acquire())
    staying = asyncio.ensure_future(queue.acquire())
    await _settle()
    gone.cancel()
    await _settle()
    assert queue.queued == 1
    queue.release()
    await staying
    assert queue.active == 1


async def test_close_fails_waiters_and_new_requests_with_503() -> None:
    queue = AdmissionQueue(max_active=1, max_queued=2, max_wait_s=30)
    await queue.acquire()
    waiting = asyncio.ensure_future(queue.acquire())
    await _settle()
    queue.close(shutting_down())
    with pytest.raises(APIError) as failed:
        await waiting
    assert failed.value.status == 503 and failed.value.code == "server_shutting_down"
    with pytest.raises(APIError) as refused:
        await queue.acquire()
    assert refused.value.status == 503 and _retry_after(refused.value) >= 1


async def test_unlimited_queue_never_waits() -> None:
    queue = AdmissionQueue(max_active=None, max_queued=0, max_wait_s=1)
    for _ in range(100):
        await queue.acquire()
    assert queue.active == 100


async def test_tenant_concurrency_is_per_tenant() -> None:
    limits = TenantLimits(FakeStore(), max_concurrent=2, requests_per_minute=None)
    limits.enter("a")
    limits.enter("a")
    limits.enter("b")
    with pytest.raises(APIError) as refused:
        limits.enter("a")
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    limits.leave("a")
    limits.enter("a")


async def test_requests_per_minute_fixed_window_and_retry_after() -> None:
    now = [170.0]  # window [120, 180)
    store = FakeStore()
    limits = TenantLimits(store, max_concurrent=None, requests_per_minute=2, clock=lambda: now[0])
    await limits.count_request("a")
    await limits.count_request("a")
    await limits.count_request("b")  # other tenants have their own window
    with pytest.raises(APIError) as refused:
        await limits.count_request("a")
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    assert _retry_after(refused.value) == 10  # seconds to the window's end
    now[0] = 179.6
    with pytest.raises(APIError) as late:
        await limits.count_request("a")
    assert _retry_after(late.value) == 1  # never 0
    now[0] = 181.0  # a new window
    await limits.count_request("a")
    assert store.windows[("a", 180)] == 1


async def test_unreachable_store_lets_requests_through() -> None:
    limits = TenantLimits(FakeStore(fail=True), max_concurrent=None, requests_per_minute=1)
    await limits.count_request("a")
    await limits.count_request("a")


async def test_admission_releases_the_tenant_count_when_the_queue_refuses() -> None:
    reasons: list[str] = []
    admission = Admission(
        AdmissionQueue(max_active=1, max_queued=0, max_wait_s=1), TenantLimits(FakeStore(), 5, None), reasons.append
    )
    lease = await admission.admit("a")
    with pytest.raises(APIError):
        await admission.admit("a")
    assert admission.tenants.running == {"a": 1} and reasons == ["queue_full"]
    lease.release()
    lease.release()  # idempotent
    assert admission.tenants.running == {} and admission.queue.active == 0 and admission.in_flight == 0


async def test_cancelled_admission_while_queued_leaves_nothing_behind() -> None:
    admission = Admission(AdmissionQueue(max_active=1, max_queued=2, max_wait_s=30), TenantLimits(FakeStore(), 5, None))
    lease = await admission.admit("a")
    waiting = asyncio.ensure_future(admission.admit("a"))
    await _settle()
    waiting.cancel()  # the client went away while queued
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert admission.tenants.running == {"a": 1} and admission.queue.queued == 0
    lease.release()
    assert admission.queue.active == 0 and admission.tenants.running == {}


async def test_draining_refuses_new_requests() -> None:
    reasons: list[str] = []
    admission = Admission(AdmissionQueue(2, 2, 30), TenantLimits(FakeStore(), None, None), reasons.append)
    admission.start_draining()
    with pytest.raises(APIError) as refused:
        await admission.admit("a")
    assert refused.value.status == 503 and reasons == ["draining"]


def _admission(**admission: int) -> Admission:
    settings = Settings(admission=admission, engine={"max_num_seqs": 8}).resolved(cuda=False, model_seq_length=8192)
    return Admission.from_settings(settings.admission, TenantLimitSettings(), FakeStore())


def test_defaults_derive_from_the_engine() -> None:
    admission = _admission()
    assert admission.queue.max_active == 8 and admission.queue.max_queued == 8
    unlimited = _admission(max_active=0)
    assert unlimited.queue.max_active is None
    with pytest.raises(ValueError, match="resolved"):
        Admission.from_settings(AdmissionSettings(), TenantLimitSettings(), FakeStore())


def _limits(**timeouts: float) -> TimeLimits:
    return TimeLimits(TimeoutSettings(**timeouts), Metrics())


def _rejections(limits: TimeLimits) -> dict[str, float]:
    samples = limits.metrics.rejections.collect()[0].samples
    return {s.labels["reason"]: s.value for s in samples if s.name.endswith("_total")}


def _open_streams(limits: TimeLimits) -> float:
    return limits.metrics.registry.get_sample_value("glm4voice_active_streams")


class Source:
    """An event source that yields `items` and then hangs, recording whether its cleanup ran."""

    def __init__(self, items: list[str]) -> None:
        self.items = items
        self.cleaned = False

    async def events(self):
        try:
            for item in self.items:
                yield item
            await asyncio.Event().wait()
        finally:
            self.cleaned = True


async def test_first_audio_timeout_stops_the_generation() -> None:
    limits = _limits(first_audio_s=0.05, request_s=0)
    source = Source(["text", "text"])
    got: list[str] = []
    with pytest.raises(APIError) as expired:
        async for item in limits.bounded(source.events(), is_audio=lambda e: e == "audio", stream=True):
            got.append(item)
    assert got == ["text", "text"]
    assert expired.value.status == 503 and expired.value.code == "first_audio_timeout"
    assert source.cleaned and _open_streams(limits) == 0 and _rejections(limits) == {"first_audio_timeout": 1}


async def test_request_timeout_after_first_audio() -> None:
    limits = _limits(first_audio_s=30, request_s=0.05)
    source = Source(["audio"])
    with pytest.raises(APIError) as expired:
        async for _ in limits.bounded(source.events(), is_audio=lambda e: e == "audio"):
            pass
    assert expired.value.code == "request_timeout" and source.cleaned


async def test_no_limits_pass_everything_through() -> None:
    limits = _limits(first_audio_s=0, request_s=0)

    async def finite():
        for item in ("a", "b"):
            yield item

    assert [i async for i in limits.bounded(finite(), is_audio=lambda e: True)] == ["a", "b"]


async def test_aborted_lease_ends_the_generation_with_its_error() -> None:
    limits = _limits(first_audio_s=0, request_s=0)
    admission = Admission(AdmissionQueue(2, 2, 30), TenantLimits(FakeStore(), None, None))
    lease = await admission.admit("a")
    token = bind_request(RequestContext("req-1", lease=lease))
    try:
        source = Source(["audio"])
        got: list[str] = []

        async def consume() -> None:
            async for item in limits.bounded(source.events(), is_audio=lambda e: e == "audio"):
                got.append(item)

        task = asyncio.ensure_future(consume())
        await _settle()
        assert admission.abort_all(shutting_down()) == 1
        with pytest.raises(APIError) as aborted:
            await task
        assert aborted.value.code == "server_shutting_down" and got == ["audio"] and source.cleaned
        assert _rejections(limits) == {"drain_abort": 1}
    finally:
        unbind_request(token)
        lease.release()


async def test_preparation_counts_against_the_request_time_limit() -> None:
    # Decoding and tokenizing a request's audio is the request's work too: a preparation that runs past
    # `timeouts.request_s` is stopped with the request_timeout error, and one that ends in time leaves the
    # generation only what is left of the same limit.
    limits = _limits(first_audio_s=0, request_s=0.3)
    token = bind_request(RequestContext("req-slow"))
    try:
        with pytest.raises(APIError) as expired:
            async with limits.preparing():
                await asyncio.sleep(30)
        assert expired.value.status == 503 and expired.value.code == "request_timeout"
    finally:
        unbind_request(token)
    # 2 s, 1 s of it preparing: a loaded CI machine can be late by tenths of a second, which must not decide
    # whether the preparation itself ends in time (it once did with 0.9 s of a 1 s limit).
    limits = _limits(first_audio_s=0, request_s=2.0)
    token = bind_request(RequestContext("req-shared"))
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with limits.preparing():
            await asyncio.sleep(1.0)
        source = Source(["text"])
        with pytest.raises(APIError) as expired:
            async for _ in limits.bounded(source.events()):
                pass
        assert expired.value.code == "request_timeout" and source.cleaned
        assert loop.time() - started < 3.5  # one deadline for both (2 s), not another 2 s for the generation
    finally:
        unbind_request(token)
