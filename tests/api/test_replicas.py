"""Scale-out on loopback: a redis-server with persistence, two real replicas on `--store redis://…` and HAProxy
(`deploy/haproxy/haproxy.cfg`, health checks on /health/ready) in front. Everything goes through the balancer with
the official SDK, its own retries off, so any error the balancer lets through is seen.

The scenarios share one cluster and run in this order (each leaves both replicas up, except the last):
keys across replicas, a conversation continued on the other replica, a tenant's rate shared by both, Redis
restarted, a rolling restart (SIGTERM), a replica killed (kill -9).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.api.cluster import (
    AUTH_CACHE_S,
    MODEL,
    REQUESTS_PER_MINUTE,
    STATIC_KEY,
    Cluster,
    get,
    start_streams,
)

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("replicas")]
STREAM_TOKENS = 780  # 20 cycles: they run on well after the balancer reacts (seconds), and end within a minute
FIRST = [{"role": "user", "content": "First question"}]


@pytest.fixture(scope="module")
def cluster(default_set: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster.start(cache_dir, tmp_path_factory.mktemp("replicas"))
    try:
        yield running
    finally:
        running.close()


def _keys_cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "glm4voice_api", "keys", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GLM4VOICE_STORE": cluster.store_url},
    )


def _chat(client: openai.OpenAI, **kwargs: object) -> tuple[str, ChatCompletion]:
    """A short text answer; returns the replica that served it (HAProxy's X-Replica) and the completion."""
    body: dict = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, **kwargs}
    raw = client.chat.completions.with_raw_response.create(**body)
    return raw.headers["x-replica"], raw.parse()


def _spoken(client: openai.OpenAI) -> tuple[str, ChatCompletion]:
    return _chat(
        client,
        messages=FIRST,
        max_tokens=39,
        modalities=["text", "audio"],
        audio={"voice": "alloy", "format": "wav"},
        extra_body={"return_token_ids": True},
    )


def _follow_up(client: openai.OpenAI, audio_id: str) -> tuple[str, ChatCompletion]:
    return _chat(
        client,
        max_tokens=5,
        extra_body={"return_token_ids": True},
        messages=[*FIRST, {"role": "assistant", "audio": {"id": audio_id}}, {"role": "user", "content": "And then?"}],
    )


def _continues(first: ChatCompletion, second: ChatCompletion) -> bool:
    """The second turn's prompt holds the first turn's prompt and its exact reply tokens, as stored."""
    expected = first.model_extra["prompt_token_ids"] + first.choices[0].model_extra["token_ids"]
    return second.model_extra["prompt_token_ids"][: len(expected)] == expected


def _window_room(seconds: float) -> None:
    """Wait (< 1 min) until the fixed 60 s rate window has `seconds` left, so a burst stays within one window."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.5)


def test_cli_key_works_on_both_replicas_and_revocation_reaches_both(cluster: Cluster) -> None:
    created = _keys_cli(cluster, "create", "--tenant", "cli")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    models = cluster.balancer.url + "/v1/models"
    served = set()
    for _ in range(6):
        response = get(models, key)
        assert response.status_code == 200, response.text
        served.add(response.headers["x-replica"])
    assert served == {"r1", "r2"}

    revoked = _keys_cli(cluster, "revoke", key[:13])
    assert revoked.returncode == 0, revoked.stderr
    # Each replica caches a lookup for AUTH_CACHE_S from when it was made (before the revocation): after that
    # window no replica accepts the key.
    time.sleep(AUTH_CACHE_S + 0.5)
    refused = set()
    for _ in range(6):
        response = get(models, key)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_api_key"
        refused.add(response.headers["x-replica"])
    assert refused == {"r1", "r2"}


def test_audio_id_from_one_replica_continues_on_the_other(cluster: Cluster) -> None:
    client = cluster.client(cluster.key("conv"))
    made_on, first = _spoken(client)
    for _ in range(4):  # least-connections alternates idle replicas: the next request goes to the other one
        served_on, second = _follow_up(client, first.choices[0].message.audio.id)
        if served_on != made_on:
            break
    else:
        pytest.fail(f"every follow-up was served by {made_on}")
    assert _continues(first, second)
    cluster.notes["conversation"] = first


def test_tenant_requests_per_minute_hold_across_both_replicas(cluster: Cluster) -> None:
    key = cluster.key("rpm")
    client = cluster.client(key)
    _window_room(15)
    served = [_chat(client)[0] for _ in range(REQUESTS_PER_MINUTE)]
    assert set(served) == {"r1", "r2"}
    with pytest.raises(openai.RateLimitError) as err:
        _chat(client)
    assert err.value.body["code"] == "rate_limit_exceeded"
    assert 1 <= int(err.value.response.headers["retry-after"]) <= 60
    for server in cluster.replicas.values():  # each replica on its own refuses too: the window lives in Redis
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1
            )


def _fails_fast_with_503(call: object, *args: object) -> openai.APIStatusError:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as err:
        call(*args)  # type: ignore[operator]
    elapsed = time.monotonic() - started
    assert elapsed < 10, elapsed  # connection refused at each replica, HAProxy's two retries included
    assert err.value.status_code == 503
    # A replica's own answer while the balancer still sends it work, or the balancer's once readiness (which
    # reflects the store) has taken both out: either way a retryable 503 in the envelope.
    assert err.value.body["code"] in ("store_unavailable", "no_replica_available")
    assert int(err.value.response.headers["retry-after"]) >= 1
    return err.value


def test_redis_restart_fails_fast_then_reconnects_with_nothing_lost(cluster: Cluster) -> None:
    conv = cluster.client(cluster.key("outage"))
    first = _spoken(conv)[1]  # stored in Redis before the outage
    audio_id = first.choices[0].message.audio.id
    unseen = cluster.key("unseen")  # stored, never used: no replica has it cached
    static = cluster.client()  # the static key (tenant default) needs no store to authenticate
    _window_room(20)
    window = int(time.time() // 60)
    for _ in range(REQUESTS_PER_MINUTE):
        _chat(static)
    with pytest.raises(openai.RateLimitError):
        _chat(static)

    cluster.redis.stop()
    try:
        # What needs the store is a fast 503: an audio id, a key no replica has cached.
        _fails_fast_with_503(_follow_up, static, audio_id)
        _fails_fast_with_503(cluster.client(unseen).models.list)
        # Readiness reflects the store (a replica whose store takes no writes can keep no reply): the balancer
        # takes both out, and what it answers meanwhile is its own retryable 503.
        for name in ("r1", "r2"):
            cluster.balancer.wait_state(name, "DOWN", 15)
        _fails_fast_with_503(_chat, static)
    finally:
        cluster.redis.start()  # same folder and port: the append-only file brings everything back
    for name in ("r1", "r2"):
        cluster.balancer.wait_state(name, "UP", 30)

    # Both replicas reconnect by themselves; keys, audio ids and counters written before the outage are there.
    assert {get(cluster.balancer.url + "/v1/models", unseen).headers["x-replica"] for _ in range(4)} == {"r1", "r2"}
    continued = {}
    for _ in range(4):
        replica, second = _follow_up(conv, audio_id)
        assert _continues(first, second)
        continued[replica] = True
    assert set(continued) == {"r1", "r2"}
    if int(time.time() // 60) == window:
        with pytest.raises(openai.RateLimitError):
            _chat(static)


def test_rolling_restart_drops_nothing(cluster: Cluster) -> None:
    runs = start_streams(cluster, "roll", 4, STREAM_TOKENS)
    assert {run.replica for run in runs} == {"r1", "r2"}
    draining = cluster.replicas["r1"]
    cluster.sigterm("r1")

    # New work while r1 drains: nothing fails (a 503 from r1 before the balancer notices is retried on r2).
    new = [_chat(cluster.client(cluster.key(f"roll-new{i}")))[0] for i in range(3)]
    cluster.balancer.wait_state("r1", "DOWN", 15)
    assert any(run.is_alive() for run in runs if run.replica == "r1"), "r1's streams ended before it was taken out"
    after_down = [_chat(cluster.client(cluster.key(f"roll-after{i}")))[0] for i in range(4)]
    assert after_down == ["r2"] * 4, (new, after_down)

    for run in runs:  # every stream, r1's included, runs to its end
        run.join(240)
        assert not run.is_alive()
        assert run.error is None, (run.replica, run.error)
        assert run.finish_reason == "length" and run.audio_chunks > 1
    assert draining.process.wait(timeout=60) == 0

    cluster.restart("r1")
    cluster.balancer.wait_state("r1", "UP", 30)
    back = [_chat(cluster.client(cluster.key(f"roll-back{i}")))[0] for i in range(4)]
    assert "r1" in back, back


def test_dead_replica_fails_only_its_own_streams(cluster: Cluster) -> None:
    keep = cluster.client(cluster.key("keep"))
    victim, stored = _spoken(keep)  # an answer stored by the replica about to die
    survivor = {"r1": "r2", "r2": "r1"}[victim]
    runs = start_streams(cluster, "dead", 4, STREAM_TOKENS)
    assert {run.replica for run in runs} == {"r1", "r2"}
    cluster.kill(victim)

    # Every new request succeeds, on the survivor (a refused connection is retried there by the balancer).
    new = [_chat(cluster.client(cluster.key(f"dead-new{i}")))[0] for i in range(4)]
    assert new == [survivor] * 4
    for run in runs:
        run.join(240)
        assert not run.is_alive()
        if run.replica == victim:  # cut mid-stream: a connection error, which clients retry
            if run.error is None:  # or it had ended before the kill (seen on a fast machine)
                assert run.finish_reason == "length", run.finish_reason
                continue
            assert isinstance(run.error, httpx.TransportError | openai.APIConnectionError), repr(run.error)
        else:
            assert run.error is None, repr(run.error)
            assert run.finish_reason == "length"
    cluster.balancer.wait_state(victim, "DOWN", 15)

    # Nothing stored is lost: the dead replica's answer and the earlier conversation continue on the survivor.
    replica, second = _follow_up(keep, stored.choices[0].message.audio.id)
    assert replica == survivor and _continues(stored, second)
    first = cluster.notes["conversation"]
    replica, second = _follow_up(cluster.client(cluster.key("conv")), first.choices[0].message.audio.id)
    assert replica == survivor and _continues(first, second)
    assert get(cluster.balancer.url + "/v1/models", STATIC_KEY).status_code == 200
