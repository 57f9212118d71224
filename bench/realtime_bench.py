"""Realtime API benchmark: N concurrent sessions over the WebSocket (`/v1/realtime`), spoken turns with server VAD.

Each session is one client talking to the model: it streams a recorded question (bench/data/question_en.flac,
espeak-ng speech, 4.5 s) in 20 ms frames at real-time pace, then keeps streaming silence as a microphone does,
so the server's voice activity detection ends the turn and starts the answer by itself. The session waits for
`response.done`, then speaks again (`--turns`, the history growing), all over one WebSocket.

Per turn it records the voice-to-voice latency: `input_audio_buffer.speech_stopped` received -> first
`response.output_audio.delta` received (what the metric `glm4voice_realtime_voice_to_voice_seconds` measures on
the server), and from the last voiced frame sent to the first audio (what a user perceives: it includes the
VAD's silence duration). Per level: p50/p90/p99/max, turns completed, errors, response statuses.

    python -m bench.realtime_bench --url http://127.0.0.1:8000 --levels 1,16,32 --turns 2 \\
        --out bench/results/realtime.json

Only the standard library, numpy, PyAV and websockets (dependencies of the server) are used.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.playback import Percentiles

RATE = 24000
FRAME = RATE // 50  # 20 ms
SPEECH = Path(__file__).resolve().parent / "data" / "question_en.flac"


def load_speech(path: Path) -> np.ndarray:
    """Mono float32 at 24 kHz (any file FFmpeg reads)."""
    import av
    import soxr

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        chunks = [
            f.to_ndarray().astype(np.float32).reshape(f.samples, -1).mean(axis=1)
            if f.format.is_packed
            else f.to_ndarray().astype(np.float32).mean(axis=0)
            for f in container.decode(stream)
        ]
    samples = np.concatenate(chunks)
    if np.abs(samples).max() > 1.5:  # integer sample formats
        samples = samples / 32768.0
    return samples if rate == RATE else soxr.resample(samples, rate, RATE).astype(np.float32)


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


@dataclass
class TurnResult:
    session: int
    turn: int
    status: str | None = None
    error: str | None = None
    voice_to_voice_s: float | None = None
    """speech_stopped received -> first audio delta received."""
    speech_end_to_audio_s: float | None = None
    """last voiced frame sent -> first audio delta received (includes the VAD's silence duration)."""
    input_tokens: int | None = None
    output_tokens: int | None = None
    audio_s: float = 0.0
    split_turns: int = 0
    """Answers cancelled because the question went on after a pause the VAD took for the end of the turn."""


@dataclass
class Session:
    index: int
    args: argparse.Namespace
    speech: bytes
    turns: list[TurnResult] = field(default_factory=list)

    async def run(self) -> None:
        import websockets

        url = self.args.url.replace("http://", "ws://").replace("https://", "wss://").rstrip("/")
        headers = {"Authorization": f"Bearer {self.args.api_key}"} if self.args.api_key else {}
        try:
            async with websockets.connect(
                f"{url}/v1/realtime?model={self.args.model}",
                additional_headers=headers,
                max_size=None,
                subprotocols=["realtime"],
            ) as ws:
                await self._talk(ws)
        except Exception as exc:  # noqa: BLE001 - one failing session is a result, not the end of the benchmark
            self.turns.append(TurnResult(self.index, len(self.turns), error=f"{type(exc).__name__}: {exc}"[:200]))

    async def _talk(self, ws) -> None:
        await ws.send(
            json.dumps(
                {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "max_output_tokens": self.args.max_output_tokens,
                        "audio": {
                            "input": {
                                "turn_detection": {"type": "server_vad", "silence_duration_ms": self.args.silence_ms}
                            }
                        },
                    },
                }
            )
        )
        silence = bytes(2 * FRAME)
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0  # frames sent: frame k goes out at start + k * 20 ms (no drift)
        for turn_index in range(self.args.turns):
            turn = TurnResult(self.index, turn_index)
            self.turns.append(turn)
            frames = [self.speech[i : i + 2 * FRAME] for i in range(0, len(self.speech), 2 * FRAME)]
            done = asyncio.Event()
            state: dict = {"stopped_at": None, "voiced_end": None}
            reader = asyncio.ensure_future(self._read(ws, turn, state, done))
            try:
                for k, frame in enumerate(frames):
                    await asyncio.sleep(max(0.0, start + sent * 0.02 - loop.time()))
                    await ws.send(
                        json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()})
                    )
                    sent += 1
                    if k == len(frames) - 1:
                        state["voiced_end"] = time.monotonic()
                deadline = loop.time() + self.args.turn_timeout
                while not done.is_set():  # the microphone keeps sending (silence) while the model answers
                    if loop.time() > deadline:
                        turn.error = "timeout"
                        break
                    await asyncio.sleep(max(0.0, start + sent * 0.02 - loop.time()))
                    await ws.send(
                        json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(silence).decode()})
                    )
                    sent += 1
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            if turn.error:
                return

    async def _read(self, ws, turn: TurnResult, state: dict, done: asyncio.Event) -> None:
        first = True
        while True:
            event = json.loads(await ws.recv())
            kind = event["type"]
            now = time.monotonic()
            if kind == "input_audio_buffer.speech_stopped":
                state["stopped_at"] = now
            elif kind == "response.created":
                first = True
                turn.audio_s = 0.0
            elif kind == "response.done" and event["response"]["status"] == "cancelled":
                # The VAD ended the turn at a pause inside the question, and the rest of it barged in.
                turn.split_turns += 1
                turn.voice_to_voice_s = turn.speech_end_to_audio_s = None
            elif kind == "response.output_audio.delta":
                turn.audio_s += len(base64.b64decode(event["delta"])) / 2 / RATE
                if first:
                    first = False
                    if state["stopped_at"] is not None:
                        turn.voice_to_voice_s = now - state["stopped_at"]
                    if state["voiced_end"] is not None:
                        turn.speech_end_to_audio_s = now - state["voiced_end"]
            elif kind == "response.done":
                response = event["response"]
                turn.status = response["status"]
                usage = response.get("usage") or {}
                turn.input_tokens, turn.output_tokens = usage.get("input_tokens"), usage.get("output_tokens")
                done.set()
                return
            elif kind == "error":
                turn.error = event["error"].get("message", "error")[:200]


def percentiles(seconds: list[float]) -> dict[str, float | None]:
    """In milliseconds, as loadgen reports its latencies."""
    return asdict(Percentiles.of(seconds, scale=1000, digits=1))


async def run_level(concurrency: int, args: argparse.Namespace, speech: bytes) -> dict:
    sessions = [Session(i, args, speech) for i in range(concurrency)]
    rng = random.Random(args.seed + concurrency)

    async def start(session: Session) -> None:
        await asyncio.sleep(rng.uniform(0, args.ramp))
        await session.run()

    began = time.monotonic()
    await asyncio.gather(*(start(s) for s in sessions))
    turns = [t for s in sessions for t in s.turns]
    # Random weights never stop by themselves: an answer that ran to max_output_tokens ("incomplete") counts.
    finished = ("completed", "incomplete")
    ok = [t for t in turns if t.error is None and t.status in finished and t.voice_to_voice_s is not None]
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for t in turns:
        statuses[t.status or "none"] = statuses.get(t.status or "none", 0) + 1
        if t.error:
            errors[t.error[:80]] = errors.get(t.error[:80], 0) + 1
    result = {
        "concurrency": concurrency,
        "wall_s": round(time.monotonic() - began, 1),
        "turns": len(turns),
        "turns_ok": len(ok),
        "statuses": statuses,
        "errors": errors,
        "voice_to_voice_ms": percentiles([t.voice_to_voice_s for t in ok]),
        "speech_end_to_first_audio_ms": percentiles([t.speech_end_to_audio_s for t in ok if t.speech_end_to_audio_s]),
        "audio_s_per_turn": round(float(np.mean([t.audio_s for t in ok])), 2) if ok else None,
        "split_turns": sum(t.split_turns for t in turns),
    }
    if args.keep_turns:
        result["turn_results"] = [asdict(t) for t in turns]
    return result


async def run(args: argparse.Namespace) -> dict:
    speech = pcm16(load_speech(Path(args.speech)))
    levels = []
    for concurrency in args.levels:
        level = await run_level(concurrency, args, speech)
        print(json.dumps({k: v for k, v in level.items() if k != "turn_results"}), flush=True)
        levels.append(level)
    return {
        "benchmark": "realtime voice-to-voice",
        "url": args.url,
        "model": args.model,
        "speech": Path(args.speech).name,
        "speech_s": round(len(speech) / 2 / RATE, 2),
        "turns_per_session": args.turns,
        "max_output_tokens": args.max_output_tokens,
        "silence_duration_ms": args.silence_ms,
        "levels": levels,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="glm-4-voice-9b")
    p.add_argument("--api-key", default=None)
    p.add_argument(
        "--levels",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16, 32],
        help="concurrent sessions per level, run one level after another",
    )
    p.add_argument("--turns", type=int, default=2, help="spoken turns per session")
    p.add_argument("--max-output-tokens", type=int, default=390, help="390 = 10 x (13 text + 26 audio)")
    p.add_argument("--silence-ms", type=int, default=500, help="server VAD silence_duration_ms")
    p.add_argument("--speech", default=str(SPEECH), help="the question every session speaks (any audio file)")
    p.add_argument("--ramp", type=float, default=1.0, help="sessions start uniformly within this many seconds")
    p.add_argument("--turn-timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-turns", action="store_true", help="write every turn's figures too")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
