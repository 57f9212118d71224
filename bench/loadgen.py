"""Load generator over the public HTTP API: N concurrent spoken-chat sessions (audio in, streamed audio out).

Each session is a client that sends `--turns` spoken turns one after another (the second and later turns refer to
the previous reply by `audio.id`, as a voice assistant does), streaming with `modalities=["text","audio"]` and
`audio.format="pcm16"`. Sessions start spread over `--ramp` seconds, as real users do not all press "talk" in the
same millisecond.

Every audio chunk's arrival is recorded (seconds since the request was sent, seconds of audio in it), and from those
(bench/playback.py) per turn: first audio, playable latency (the start delay a player needs to never run dry), gaps
and their total silence for a player starting at the first chunk, the answer ratio (sent -> last audio byte, over
the audio's length), completion tokens (`stream_options.include_usage`) and errors by HTTP status. A level is real
time when every turn succeeded and every playable latency is at most 1 s (playback.REALTIME_PLAYABLE_S).

Overload mode (`--overload-sessions N --overload-seconds S`, or `run_overload`): N closed-loop clients send turns
back to back for S seconds; a 429 waits its Retry-After (at most 2 s) and tries again. It reports offered, admitted
and rejected requests, other errors, and the fraction of admitted turns that play without a gap once a player has a
250 ms jitter buffer after the first audio (queue wait excluded).

    python -m bench.loadgen --url http://127.0.0.1:8000 --concurrency 1,8,32 --turns 2 --max-tokens 390 \\
        --out bench/results/loadgen.json

Only the standard library, numpy and httpx (already dependencies) are used, so it runs anywhere the server does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import time
import wave
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np

from bench.playback import (
    LevelSummary,
    OverloadSummary,
    TurnResult,
    level_summary,
    overload_summary,
)

OUT_RATE = 24000  # pcm16 output of the chat API
RETRY_AFTER_CAP_S = 2.0
"""An overload client waits the server's Retry-After, but at most this, before it tries again."""


@dataclass
class LevelResult:
    concurrency: int
    wall_s: float
    turns: list[TurnResult] = field(default_factory=list)

    def summary(self) -> LevelSummary:
        return level_summary(self.concurrency, self.turns, self.wall_s)


@dataclass
class OverloadResult:
    sessions: int
    seconds: float
    wall_s: float = 0.0
    turns: list[TurnResult] = field(default_factory=list)

    def summary(self) -> OverloadSummary:
        return overload_summary(self.sessions, self.seconds, self.turns, self.wall_s)


def progress_line(summary: LevelSummary) -> dict:
    """The figures of a level worth a line of progress output."""
    return {
        "concurrency": summary.concurrency,
        "ok": summary.ok,
        "errors": summary.errors,
        "realtime": summary.realtime,
        "first_audio_ms": [summary.first_audio_ms.p50, summary.first_audio_ms.p99],
        "playable_ms": [summary.playable_ms.p50, summary.playable_ms.p99],
        "streams_with_gap": summary.streams_with_gap,
        "answer_ratio_p50": summary.answer_ratio.p50,
        "tokens_per_s": summary.tokens_per_s,
    }


def turn_details(turns: list[TurnResult]) -> list[dict]:
    """Every turn's record and derived figures (for --keep-turns), arrivals included."""
    out = []
    for t in turns:
        stats = t.stats
        derived = asdict(stats) | {"answer_ratio": stats.answer_ratio} if stats else {}
        out.append(asdict(t) | {"ok": t.ok} | derived)
    return out


def make_question_wav(seconds: float = 3.0, sample_rate: int = 16000, seed: int = 0) -> bytes:
    """A speech-like test clip (voiced harmonics with a syllable envelope); content does not matter here."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 3.5 * t)) ** 2
    signal = 0.2 * voiced * envelope + 0.01 * rng.standard_normal(t.size)
    pcm = (np.clip(signal, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


async def run_turn(
    client: httpx.AsyncClient,
    args: argparse.Namespace,
    wav_b64: str,
    result: TurnResult,
    previous_audio_id: str | None,
) -> str | None:
    """Send one spoken turn and record every audio chunk's arrival into `result`; returns the reply's audio id."""
    audio_part = {"type": "input_audio", "input_audio": {"data": wav_b64, "format": "wav"}}
    messages: list[dict] = []
    if previous_audio_id:
        messages += [
            {"role": "user", "content": [audio_part]},
            {"role": "assistant", "audio": {"id": previous_audio_id}},
        ]
    messages.append({"role": "user", "content": [audio_part]})
    body = {
        "model": args.model,
        "messages": messages,
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "pcm16"},
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": args.max_tokens,
        "temperature": 0.8,
        "top_p": 0.8,
    }
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    audio_id = None
    sent = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            result.status = response.status_code
            if response.status_code != 200:
                result.retry_after_s = _retry_after(response.headers.get("retry-after"))
                result.error = (await response.aread()).decode(errors="replace")[:200]
                return None
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    result.done = True
                    break
                result.events += 1
                chunk = json.loads(data)
                if chunk.get("error"):
                    result.error = str(chunk["error"].get("message"))[:200]
                    break
                if chunk.get("usage"):
                    result.completion_tokens = int(chunk["usage"].get("completion_tokens") or 0)
                for choice in chunk.get("choices") or []:
                    audio = (choice.get("delta") or {}).get("audio") or {}
                    audio_id = audio.get("id", audio_id)
                    if audio.get("transcript") and result.first_text_s is None:
                        result.first_text_s = time.perf_counter() - sent
                    if audio.get("data"):
                        seconds = len(base64.b64decode(audio["data"])) / 2 / OUT_RATE
                        result.arrivals.append((time.perf_counter() - sent, seconds))
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    return audio_id


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: not sent by this server


def _client(url: str, clients: int, args: argparse.Namespace) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=httpx.Timeout(args.timeout, connect=30))


async def run_level(url: str, concurrency: int, args: argparse.Namespace, wav_b64: str) -> LevelResult:
    rng = random.Random(args.seed + concurrency)
    level = LevelResult(concurrency=concurrency, wall_s=0.0)

    # A lone user (--lone-turns): that many separate one-turn conversations one after another, so that the level's
    # p50 is a median of several first audios, the server's first lone request only one of them.
    lone = concurrency == 1 and args.lone_turns > 0

    async def session(index: int, client: httpx.AsyncClient, start: float) -> None:
        await asyncio.sleep(rng.uniform(0, args.ramp))
        audio_id = None
        for turn in range(args.lone_turns if lone else args.turns):
            result = TurnResult(session=index, turn=turn, started_s=time.perf_counter() - start)
            level.turns.append(result)
            audio_id = await run_turn(client, args, wav_b64, result, None if lone else audio_id)

    async with _client(url, concurrency, args) as client:
        start = time.perf_counter()
        await asyncio.gather(*(session(i, client, start) for i in range(concurrency)))
        level.wall_s = time.perf_counter() - start
    return level


async def run_overload(
    url: str, sessions: int, seconds: float, args: argparse.Namespace, wav_b64: str
) -> OverloadResult:
    """`sessions` closed-loop clients send single turns back to back until `seconds` have passed (no turn starts
    after; those running finish). A 429 waits Retry-After, capped at RETRY_AFTER_CAP_S, then tries again.

    Sessions start uniformly within `--ramp` seconds, or within `--overload-stagger` seconds when given: started
    together, equal turns stay in step (a burst every turn, which batches well in the decoder); spread over a turn's
    length they model users who arrive at different times (bench/results/GPU.md: the decoder then meets far fewer
    streams per pass)."""
    rng = random.Random(args.seed + 7919 * sessions)
    result = OverloadResult(sessions=sessions, seconds=seconds)
    spread = args.ramp if args.overload_stagger is None else args.overload_stagger

    async def session(index: int, client: httpx.AsyncClient, start: float) -> None:
        await asyncio.sleep(rng.uniform(0, min(spread, seconds)))
        turn = 0
        while time.perf_counter() - start < seconds:
            record = TurnResult(session=index, turn=turn, started_s=time.perf_counter() - start)
            result.turns.append(record)
            turn += 1
            await run_turn(client, args, wav_b64, record, None)
            if record.status == 429:
                await asyncio.sleep(min(record.retry_after_s or 1.0, RETRY_AFTER_CAP_S))
            elif not record.ok:
                await asyncio.sleep(0.1)  # a failing server must not turn the client into a busy loop

    async with _client(url, sessions, args) as client:
        start = time.perf_counter()
        await asyncio.gather(*(session(i, client, start) for i in range(sessions)))
        result.wall_s = time.perf_counter() - start
    return result


async def run(args: argparse.Namespace) -> dict:
    wav_b64 = base64.b64encode(make_question_wav(args.question_seconds)).decode()
    levels = []
    for concurrency in args.concurrency:
        level = await run_level(args.url, concurrency, args, wav_b64)
        summary = level.summary()
        entry = asdict(summary)
        if args.keep_turns:
            entry["turn_details"] = turn_details(level.turns)
        levels.append(entry)
        print(json.dumps(progress_line(summary)), flush=True)
    out = {
        "url": args.url,
        "turns_per_session": args.turns,
        "max_tokens": args.max_tokens,
        "question_seconds": args.question_seconds,
        "levels": levels,
        "realtime_streams": max((lv["concurrency"] for lv in levels if lv["realtime"]), default=0),
    }
    if args.overload_sessions and args.overload_seconds > 0:
        overload = await run_overload(args.url, args.overload_sessions, args.overload_seconds, args, wav_b64)
        out["overload"] = asdict(overload.summary())
        if args.keep_turns:
            out["overload"]["turn_details"] = turn_details(overload.turns)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="glm-4-voice-9b")
    p.add_argument("--api-key", default=None)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 8, 32])
    p.add_argument("--turns", type=int, default=2, help="spoken turns per session (later ones use audio.id)")
    p.add_argument("--lone-turns", type=int, default=0, help="at concurrency 1: this many one-turn conversations")
    p.add_argument("--max-tokens", type=int, default=390, help="390 = 10 x (13 text + 26 audio) = 20.8 s of speech")
    p.add_argument("--question-seconds", type=float, default=3.0)
    p.add_argument("--ramp", type=float, default=1.0, help="sessions start uniformly within this many seconds")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overload-sessions", type=int, default=0, help="closed-loop clients of the overload run (0: none)")
    p.add_argument("--overload-seconds", type=float, default=60.0)
    p.add_argument(
        "--overload-stagger", type=float, default=None, help="overload sessions start within this many s (--ramp)"
    )
    p.add_argument("--keep-turns", action="store_true", help="write every turn's figures and chunk arrivals too")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(json.dumps({"realtime_streams": result["realtime_streams"]}))


if __name__ == "__main__":
    main()
