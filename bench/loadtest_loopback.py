"""Loopback load test: N concurrent spoken-chat streams for T seconds against one server; fails on leaks.

Each of `--streams` clients loops until `--duration` is over: a streamed spoken turn (audio in as a wav, pcm16
audio out, `modalities=["text","audio"]`); a 429 (the server's admission control at work) makes the client wait
its Retry-After (at most the time left) and try again. Outcomes are counted: ok, 429 (designed), other errors.
The server process's RSS (with its children: the engine core) is sampled every second, and /metrics is read before
and after. After the run it waits (bounded) for the server to settle, then checks that no engine request, decoder
session, vLLM running request or admission slot is left.

Without `--url` it starts the server itself on the built-in default (random weights) on a free loopback port and
stops it at the end. Exit status 1 when: any error other than 429, RSS grew by more than `--max-rss-growth-mib`
from the end of warm-up to the end of the run, or something leaked.

    python -m bench.loadtest_loopback      # 100 streams x 60 s, writes bench/results/loopback_load.json
    python -m bench.loadtest_loopback --url http://127.0.0.1:8000 --pid 1234 --streams 12 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.loadgen import make_question_wav

REPO = Path(__file__).resolve().parents[1]
OUT_RATE = 24000
LEAK_GAUGES = (
    "glm4voice_engine_active_requests",
    "glm4voice_decoder_active_sessions",
    "vllm:num_requests_running",
    "glm4voice_active_streams",
    "glm4voice_admission_active",
    "glm4voice_admission_queue_depth",
)
REPORTED = (
    *LEAK_GAUGES,
    "glm4voice_engine_aborted_requests_total",
    "glm4voice_audio_output_seconds_total",
    "glm4voice_audio_input_seconds_total",
    "glm4voice_first_audio_seconds_count",
    "glm4voice_first_audio_seconds_sum",
    "glm4voice_stream_rtf_count",
    "glm4voice_stream_rtf_sum",
    "glm4voice_rejections_total",
)


def parse_metrics(text: str) -> dict[str, float]:
    """Each metric summed over its labels (rejections also per reason)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            number = float(value)
        except ValueError:
            continue
        values[name] = values.get(name, 0.0) + number
        if name == "glm4voice_rejections_total" and 'reason="' in name_labels:
            reason = name_labels.split('reason="', 1)[1].split('"', 1)[0]
            values[f"{name}:{reason}"] = number
    return values


def rss_mib(pid: int) -> float:
    """Resident memory of the process and its descendants, from /proc (Linux)."""
    total_kib = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total_kib += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
        except (OSError, StopIteration, ValueError):
            continue
    return total_kib / 1024


class Outcomes:
    def __init__(self) -> None:
        self.ok = 0
        self.rate_limited = 0
        self.errors: dict[str, int] = {}
        self.audio_s = 0.0
        self.first_audio_s: list[float] = []

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def one_turn(client: httpx.AsyncClient, body: dict, out: Outcomes, time_left: float) -> float:
    """One streamed spoken turn; returns how long to wait before the next (Retry-After after a 429)."""
    sent = time.perf_counter()
    audio_s = 0.0
    first = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code == 429:
                out.rate_limited += 1
                await response.aread()
                return min(time_left, float(response.headers.get("retry-after", "1")) * random.uniform(0.5, 1.0))
            if response.status_code != 200:
                out.error(f"http {response.status_code}: {(await response.aread())[:120]!r}")
                return 1.0
            done = False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    out.error(f"stream error: {chunk['error'].get('code')}")
                    return 1.0
                for choice in chunk.get("choices") or []:
                    audio = (choice.get("delta") or {}).get("audio") or {}
                    if audio.get("data"):
                        first = first if first is not None else time.perf_counter() - sent
                        audio_s += len(base64.b64decode(audio["data"])) / 2 / OUT_RATE
            if not done or audio_s == 0:
                out.error("stream ended without [DONE] or without audio")
                return 1.0
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        out.error(type(exc).__name__)
        return 1.0
    out.ok += 1
    out.audio_s += audio_s
    if first is not None:
        out.first_audio_s.append(first)
    return 0.0


async def run_load(url: str, args: argparse.Namespace, pid: int | None) -> dict:
    wav = base64.b64encode(make_question_wav(args.question_seconds)).decode()
    body = {
        "model": args.model,
        "messages": [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}}]}
        ],
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "pcm16"},
        "stream": True,
        "max_tokens": args.max_tokens,
    }
    out = Outcomes()
    rss: list[tuple[float, float]] = []
    limits = httpx.Limits(max_connections=args.streams + 8, max_keepalive_connections=args.streams + 8)
    timeout = httpx.Timeout(args.duration + 120, connect=30)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        before = parse_metrics((await client.get("/metrics")).text)
        start = time.perf_counter()
        end = start + args.duration

        async def worker(index: int) -> None:
            await asyncio.sleep(random.Random(index).uniform(0, args.ramp))
            while (left := end - time.perf_counter()) > 0:
                wait = await one_turn(client, body, out, left)
                if wait > 0:
                    await asyncio.sleep(min(wait, max(0.0, end - time.perf_counter())))

        async def sample() -> None:
            while pid is not None:
                rss.append((round(time.perf_counter() - start, 1), round(rss_mib(pid), 1)))
                await asyncio.sleep(1.0)

        sampler = asyncio.ensure_future(sample())
        await asyncio.gather(*(worker(i) for i in range(args.streams)))
        wall = time.perf_counter() - start
        # Settle: every stream has ended on the client side; the server must drop to zero on its own.
        settle_deadline = time.perf_counter() + args.settle_s
        while True:
            after = parse_metrics((await client.get("/metrics")).text)
            if all(after.get(g, 0) == 0 for g in LEAK_GAUGES) or time.perf_counter() > settle_deadline:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        sampler.cancel()
        if pid is not None:
            rss.append((round(time.perf_counter() - start, 1), round(rss_mib(pid), 1)))
    return summarize(args, out, before, after, rss, wall)


def summarize(args: argparse.Namespace, out: Outcomes, before: dict, after: dict, rss: list, wall: float) -> dict:
    leaks = {g: after.get(g, 0.0) for g in LEAK_GAUGES if after.get(g, 0.0) != 0}
    warm = [m for t, m in rss if t >= args.warmup_s]
    rss_after_warmup = warm[0] if warm else None
    rss_end = rss[-1][1] if rss else None
    growth = round(rss_end - rss_after_warmup, 1) if rss_end is not None and rss_after_warmup is not None else None
    first = sorted(out.first_audio_s)
    failures = []
    if out.errors:
        failures.append(f"errors other than 429: {out.errors}")
    if leaks:
        failures.append(f"leaked after the run: {leaks}")
    if growth is not None and growth > args.max_rss_growth_mib:
        failures.append(f"RSS grew by {growth} MiB after warm-up (bound {args.max_rss_growth_mib} MiB)")
    if out.ok == 0:
        failures.append("no turn completed")
    delta = {
        k: round(after.get(k, 0.0) - before.get(k, 0.0), 3)
        for k in sorted(set(before) | set(after))
        if k.startswith(REPORTED) and after.get(k, 0.0) != before.get(k, 0.0)
    }
    return {
        "streams": args.streams,
        "duration_s": args.duration,
        "wall_s": round(wall, 1),
        "max_tokens": args.max_tokens,
        "outcomes": {"ok": out.ok, "rate_limited_429": out.rate_limited, "errors": out.errors},
        "audio_seconds_received": round(out.audio_s, 1),
        "first_audio_s": {"p50": first[len(first) // 2] if first else None, "max": first[-1] if first else None},
        "rss_mib": {
            "after_warmup": rss_after_warmup,
            "end": rss_end,
            "max": max((m for _, m in rss), default=None),
            "growth_after_warmup": growth,
            "bound": args.max_rss_growth_mib,
            "samples": rss[:: max(1, len(rss) // 120)],
        },
        "metrics_after": {k: after.get(k) for k in REPORTED if k in after},
        "metrics_delta": delta,
        "leaks": leaks,
        "passed": not failures,
        "failures": failures,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    serve = [sys.executable, "-m", "glm4voice_api", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd = [*serve, *args.server_args]
    log = open(args.server_log, "w")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}; see {args.server_log}")
        try:
            if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    os.killpg(process.pid, signal.SIGKILL)
    raise SystemExit("server not ready in 600 s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running server (default: start one on the built-in default)")
    p.add_argument("--pid", type=int, default=None, help="with --url: the server's pid, for RSS sampling")
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--duration", type=float, default=60.0, help="seconds during which new turns start")
    p.add_argument("--max-tokens", type=int, default=195, help="reply tokens per turn (195 = 5 x (13 + 26))")
    p.add_argument("--question-seconds", type=float, default=2.0)
    p.add_argument("--ramp", type=float, default=2.0, help="clients start uniformly within this many seconds")
    p.add_argument("--warmup-s", type=float, default=15.0, help="RSS growth is measured from this point on")
    p.add_argument("--max-rss-growth-mib", type=float, default=256.0)
    p.add_argument("--settle-s", type=float, default=30.0, help="how long the server may take to drop to zero")
    p.add_argument("--model", default="glm-4-voice-9b")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "loopback_load.json"))
    p.add_argument("--server-log", default="/tmp/glm4voice-loadtest-server.log")
    p.add_argument(
        "--server-args",
        nargs=argparse.REMAINDER,
        default=["--engine.max-model-len", "1024"],
        help="flags for the server it starts (last on the command line)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    process = None
    url, pid = args.url, args.pid
    if url is None:
        process, url = start_server(args)
        pid = process.pid
    try:
        result = asyncio.run(run_load(url, args, pid))
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
    result["server"] = {
        "url": url if args.url else "started by the test (built-in default)",
        "args": [] if args.url else args.server_args,
    }
    if process is not None:
        result["server"]["exit_status"] = process.returncode
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(json.dumps({k: result[k] for k in ("outcomes", "rss_mib", "leaks", "passed", "failures")}, default=str))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
