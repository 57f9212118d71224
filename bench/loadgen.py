"""Load generator over the public HTTP API: N concurrent spoken-chat sessions (audio in, streamed audio out).

Each session is a client that sends `--turns` spoken turns one after another (the second and later turns refer to
the previous reply by `audio.id`, as a voice assistant does), streaming with `modalities=["text","audio"]` and
`audio.format="pcm16"`. Sessions start spread over `--ramp` seconds, as real users do not all press "talk" in the
same millisecond.

Per turn it records: first-audio latency (request sent -> first audio bytes), the real-time factor
(request sent -> last audio byte, over the seconds of audio received; < 1 means the whole answer arrived faster
than it plays), playback stalls (a chunk arriving after everything before it would have finished playing, with
playback starting at the first chunk), completion tokens (from `stream_options.include_usage`) and errors by
HTTP status. A turn is "real time" when its RTF < 1; a concurrency level is real time when every turn is.

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

OUT_RATE = 24000  # pcm16 output of the chat API


@dataclass
class TurnResult:
    session: int
    turn: int
    status: int = 0
    error: str | None = None
    sent: float = 0.0
    first_text_s: float | None = None
    """Request sent -> first transcript text (the LLM's first tokens: the part of first audio that is not decoder)."""
    first_audio_s: float | None = None
    done_s: float | None = None
    audio_s: float = 0.0
    completion_tokens: int = 0
    stalls: int = 0
    stall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None and self.audio_s > 0

    @property
    def rtf(self) -> float | None:
        return self.done_s / self.audio_s if self.ok and self.done_s is not None else None


@dataclass
class LevelResult:
    concurrency: int
    wall_s: float
    turns: list[TurnResult] = field(default_factory=list)

    def summary(self) -> dict:
        ok = [t for t in self.turns if t.ok]
        errors: dict[str, int] = {}
        for t in self.turns:
            if not t.ok:
                key = str(t.status) if t.status and t.status != 200 else (t.error or "no audio")[:60]
                errors[key] = errors.get(key, 0) + 1
        ttfa = [t.first_audio_s * 1000 for t in ok if t.first_audio_s is not None]
        ttft = [t.first_text_s * 1000 for t in ok if t.first_text_s is not None]
        rtf = [t.rtf for t in ok if t.rtf is not None]
        tokens = sum(t.completion_tokens for t in ok)
        return {
            "concurrency": self.concurrency,
            "turns": len(self.turns),
            "ok": len(ok),
            "errors": errors,
            "realtime": bool(ok) and len(ok) == len(self.turns) and all(r < 1 for r in rtf),
            "realtime_fraction": sum(r < 1 for r in rtf) / len(self.turns) if self.turns else 0.0,
            "ttfa_ms": _percentiles(ttfa),
            "first_text_ms": _percentiles(ttft),
            "rtf": _percentiles(rtf),
            "stalled_turns": sum(t.stalls > 0 for t in ok),
            "audio_seconds": round(sum(t.audio_s for t in ok), 2),
            "completion_tokens": tokens,
            "tokens_per_s": round(tokens / self.wall_s, 1) if self.wall_s else 0.0,
            "wall_s": round(self.wall_s, 2),
        }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(arr, 50)), 3),
        "p90": round(float(np.percentile(arr, 90)), 3),
        "p99": round(float(np.percentile(arr, 99)), 3),
        "max": round(float(arr.max()), 3),
        "mean": round(float(arr.mean()), 3),
    }


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
    messages: list[dict] = []
    if previous_audio_id:
        messages += [
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": wav_b64, "format": "wav"}}]},
            {"role": "assistant", "audio": {"id": previous_audio_id}},
        ]
    messages.append(
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": wav_b64, "format": "wav"}}]}
    )
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
    played_until: float | None = None  # wall time at which the audio received so far finishes playing
    result.sent = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            result.status = response.status_code
            if response.status_code != 200:
                result.error = (await response.aread()).decode(errors="replace")[:200]
                return None
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
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
                        result.first_text_s = time.perf_counter() - result.sent
                    if audio.get("data"):
                        now = time.perf_counter()
                        seconds = len(base64.b64decode(audio["data"])) / 2 / OUT_RATE
                        if result.first_audio_s is None:
                            result.first_audio_s = now - result.sent
                            played_until = now
                        elif played_until is not None and now > played_until:
                            result.stalls += 1
                            result.stall_s += now - played_until
                            played_until = now
                        played_until = (played_until or now) + seconds
                        result.audio_s += seconds
                        result.done_s = now - result.sent
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    return audio_id


async def run_level(url: str, concurrency: int, args: argparse.Namespace, wav_b64: str) -> LevelResult:
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8)
    timeout = httpx.Timeout(args.timeout, connect=30)
    rng = random.Random(args.seed + concurrency)
    level = LevelResult(concurrency=concurrency, wall_s=0.0)

    async def session(index: int, client: httpx.AsyncClient) -> None:
        await asyncio.sleep(rng.uniform(0, args.ramp))
        audio_id = None
        for turn in range(args.turns):
            result = TurnResult(session=index, turn=turn)
            level.turns.append(result)
            audio_id = await run_turn(client, args, wav_b64, result, audio_id)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        start = time.perf_counter()
        await asyncio.gather(*(session(i, client) for i in range(concurrency)))
        level.wall_s = time.perf_counter() - start
    return level


async def run(args: argparse.Namespace) -> dict:
    wav_b64 = base64.b64encode(make_question_wav(args.question_seconds)).decode()
    levels = []
    for concurrency in args.concurrency:
        level = await run_level(args.url, concurrency, args, wav_b64)
        summary = level.summary()
        if args.keep_turns:
            summary["turn_details"] = [asdict(t) | {"rtf": t.rtf} for t in level.turns]
        levels.append(summary)
        print(
            json.dumps({k: summary[k] for k in ("concurrency", "ok", "errors", "realtime", "ttfa_ms", "rtf")}),
            flush=True,
        )
    return {
        "url": args.url,
        "turns_per_session": args.turns,
        "max_tokens": args.max_tokens,
        "question_seconds": args.question_seconds,
        "levels": levels,
        "realtime_streams": max((lv["concurrency"] for lv in levels if lv["realtime"]), default=0),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="glm-4-voice-9b")
    p.add_argument("--api-key", default=None)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    p.add_argument("--turns", type=int, default=2, help="spoken turns per session (later ones use audio.id)")
    p.add_argument("--max-tokens", type=int, default=390, help="390 = 10 x (13 text + 26 audio) = 20.8 s of speech")
    p.add_argument("--question-seconds", type=float, default=3.0)
    p.add_argument("--ramp", type=float, default=1.0, help="sessions start uniformly within this many seconds")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-turns", action="store_true", help="write every turn's figures too")
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
