"""Several real replicas on one Redis behind HAProxy, all on loopback: the harness of tests/api/test_replicas.py.

HAProxy runs `deploy/haproxy/haproxy.cfg` unchanged (addresses from the environment), so the test proves the file
operators use. Every process here is this harness's own and is stopped by `Cluster.close`.
"""

from __future__ import annotations

import asyncio
import csv
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

from glm4voice_api.store import RedisStore
from glm4voice_api.store.keys import create_key
from tests.api.conftest import RunningServer, _free_port, delta_audio, launch_server, stop_server, wait_ready
from tests.redis_server import RedisServer, terminate

REPO = Path(__file__).resolve().parents[2]
HAPROXY_DIR = REPO / "deploy" / "haproxy"
MODEL = "glm-4-voice-9b"
STATIC_KEY = "sk-static-replicas-0123456789abcdef"
AUTH_CACHE_S = 2
REQUESTS_PER_MINUTE = 8
REPLICA_FLAGS = (
    "--auth.cache-seconds",
    str(AUTH_CACHE_S),
    "--tenant-limits.requests-per-minute",
    str(REQUESTS_PER_MINUTE),
    "--timeouts.drain-s",
    "180",
    "--log.format",
    "text",
)


class Balancer:
    """HAProxy in the foreground (`-db`) on a free port, with its runtime API on a unix socket."""

    def __init__(self, folder: Path, replicas: dict[str, RunningServer]) -> None:
        exe = shutil.which("haproxy")
        if exe is None:
            raise RuntimeError("haproxy not found: `scripts/install.sh test` installs it (apt package haproxy)")
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.socket = folder / "haproxy.sock"
        self.log_path = folder / "haproxy.log"
        r1, r2 = (replicas[name].base_url.removeprefix("http://") for name in ("r1", "r2"))
        env = {
            **os.environ,
            "GLM4VOICE_LB_BIND": f"127.0.0.1:{port}",
            "GLM4VOICE_REPLICA_1": r1,
            "GLM4VOICE_REPLICA_2": r2,
            "GLM4VOICE_LB_ERRORS": str(HAPROXY_DIR / "errors"),
            "GLM4VOICE_LB_STATS_SOCKET": str(self.socket),
        }
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                [exe, "-f", str(HAPROXY_DIR / "haproxy.cfg"), "-db"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if all(state == "UP" for state in self.states().values()):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"haproxy: replicas not UP after 20 s:\n{self.log_path.read_text()}")

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Health-check state of each replica: UP, DOWN, or a transition such as 'UP 1/2'."""
        rows = csv.DictReader(self.command("show stat").lstrip("# ").splitlines())
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "replicas" and r["svname"] in ("r1", "r2")}

    def wait_state(self, name: str, state: str, timeout_s: float) -> float:
        """Seconds until `name` is in `state`; fails the test after timeout_s."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.states()[name] == state:
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"{name} not {state} after {timeout_s} s: {self.states()}")

    def stop(self) -> None:
        terminate(self.process)


@dataclass
class Cluster:
    cache_dir: Path
    folder: Path
    redis: RedisServer
    replicas: dict[str, RunningServer]
    balancer: Balancer | None = None
    keys: dict[str, str] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)
    """What one scenario leaves for a later one (an audio id made before an outage)."""
    _restarts: int = 0

    @property
    def store_url(self) -> str:
        return self.redis.url + "/0"

    @property
    def env(self) -> dict[str, str]:
        return {"GLM4VOICE_STORE": self.store_url, "GLM4VOICE_AUTH__API_KEYS": STATIC_KEY}

    @classmethod
    def start(cls, cache_dir: Path, folder: Path) -> Cluster:
        redis_server = RedisServer(folder, persistent=True).start()
        cluster = cls(cache_dir, folder, redis_server, {})
        try:
            cluster.key("bootstrap")  # a stored key from the start: auth is on for stored keys everywhere
            for name in ("r1", "r2"):  # both engines start at once: the slow part, paid once per module
                cluster.replicas[name] = launch_server(
                    cache_dir, folder / f"{name}.log", *REPLICA_FLAGS, env=cluster.env
                )
            for name, server in list(cluster.replicas.items()):  # a relaunched one (its port taken) replaces it
                cluster.replicas[name] = wait_ready(server)
            cluster.balancer = Balancer(folder, cluster.replicas)
        except BaseException:
            cluster.close()
            raise
        return cluster

    def key(self, tenant: str) -> str:
        """A stored API key of `tenant` (made once per tenant), written to Redis as `keys create` does."""
        if tenant not in self.keys:

            async def make() -> str:
                store = RedisStore(self.store_url)
                try:
                    return (await create_key(store, tenant))[1]
                finally:
                    await store.close()

            self.keys[tenant] = asyncio.run(make())
        return self.keys[tenant]

    def client(self, key: str = STATIC_KEY, **kwargs) -> openai.OpenAI:
        """The official SDK through the balancer, its own retries off: any error the balancer lets through shows."""
        assert self.balancer is not None
        return openai.OpenAI(
            base_url=self.balancer.url + "/v1", api_key=key, max_retries=0, **{"timeout": 120, **kwargs}
        )

    def sigterm(self, name: str) -> None:
        """What Kubernetes does to a pod it replaces: SIGTERM to the server process alone."""
        os.kill(self.replicas[name].process.pid, signal.SIGTERM)

    def kill(self, name: str) -> None:
        """kill -9 of the replica and its engine process: a node or container lost at once."""
        os.killpg(self.replicas[name].process.pid, signal.SIGKILL)
        self.replicas[name].process.wait(timeout=30)

    def restart(self, name: str) -> RunningServer:
        """The replica again on its port (the balancer's address for it), on the same store."""
        port = int(self.replicas[name].base_url.rsplit(":", 1)[1])
        self._restarts += 1
        log = self.folder / f"{name}.restart{self._restarts}.log"
        self.replicas[name] = wait_ready(launch_server(self.cache_dir, log, *REPLICA_FLAGS, env=self.env, port=port))
        return self.replicas[name]

    def close(self) -> None:
        if self.balancer is not None:
            self.balancer.stop()
        for server in self.replicas.values():  # all drain at once, then each is waited for
            if server.process.poll() is None:
                os.kill(server.process.pid, signal.SIGTERM)
        for server in self.replicas.values():
            stop_server(server)
        self.redis.stop()


class StreamRun(threading.Thread):
    """One streamed spoken answer through the balancer, in a thread: which replica serves it, when its first audio
    arrives, and how it ends (finish_reason and [DONE], or the exception the client saw)."""

    def __init__(self, client: openai.OpenAI, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.max_tokens = max_tokens
        self.replica: str | None = None
        self.first_audio = threading.Event()
        self.audio_chunks = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            # with_streaming_response: the headers (X-Replica) now, the body as it arrives (with_raw_response would
            # read the whole stream first).
            with self.client.chat.completions.with_streaming_response.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Tell me a long story"}],
                stream=True,
                max_tokens=self.max_tokens,
                modalities=["text", "audio"],
                audio={"voice": "alloy", "format": "pcm16"},
            ) as response:
                self.replica = response.headers.get("x-replica")
                for chunk in response.parse():
                    if not chunk.choices:
                        continue
                    if "data" in delta_audio(chunk.choices[0].delta):
                        self.audio_chunks += 1
                        self.first_audio.set()
                    self.finish_reason = chunk.choices[0].finish_reason or self.finish_reason
        except BaseException as exc:  # noqa: BLE001 - recorded for the test to judge
            self.error = exc
        finally:
            self.first_audio.set()  # never leave a waiter hanging


def start_streams(cluster: Cluster, tenant_prefix: str, count: int, max_tokens: int) -> list[StreamRun]:
    """`count` streams, each of its own tenant (the per-tenant limit stays out of the way), opened one after another
    so that least-connections spreads them over the replicas; returns once each has its first audio."""
    runs = []
    for i in range(count):
        run = StreamRun(cluster.client(cluster.key(f"{tenant_prefix}{i}")), max_tokens)
        run.start()
        assert run.first_audio.wait(120), "no first audio within 120 s"
        runs.append(run)
    return runs


def get(url: str, key: str) -> httpx.Response:
    return httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
