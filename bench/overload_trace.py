"""What happened inside an overload run, second by second: for tuning admission control on the next GPU run.

An overload's summary (bench/playback.py: gap-free fraction, 429s) says how many admitted turns stuttered, not
why. Admission control (glm4voice_api/serving/capacity.py) reacts to what the server measured, so its tuning needs
the two side by side: the server's admission limit, running and queued requests, open decoder streams and
underruns, sampled once a second from `/bench/stats` while the load runs; and every turn as the client saw it
(when it was sent, its status, first audio, playable latency and start-up slack). Together they show at how many
running streams admitted turns began to stutter, and how late the limit followed.

Stored in gpu_suite.json beside each overload summary (`overload_traces`, keyed by the run's label).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.playback import JITTER_BUFFER_S, TurnResult

TIMELINE_FIELDS = (
    *("t_s", "admission_limit", "admission_active", "admission_queued", "decoder_sessions", "underruns"),
    *("settled_underruns", "near_misses"),  # what admission control cuts on; `underruns` also counts starting ones
)
TURN_FIELDS = ("session", "started_s", "status", "first_audio_s", "playable_s", "slack_s", "worst_audio_s")
"""`worst_audio_s`: seconds of audio before the chunk that set the playable latency (a stutter at the stream's start
or later; the admission controller treats the two differently)."""


@dataclass
class OverloadTrace:
    timeline: list[list] = field(default_factory=list)
    """One row per sample, TIMELINE_FIELDS (None where the server does not report a figure)."""
    turns: list[list] = field(default_factory=list)
    """One row per turn, TURN_FIELDS (None for the audio figures of a turn without audio)."""

    def to_json(self) -> dict:
        return {
            "timeline_fields": list(TIMELINE_FIELDS),
            "timeline": self.timeline,
            "turn_fields": list(TURN_FIELDS),
            "turns": self.turns,
        }


def turn_rows(turns: list[TurnResult]) -> list[list]:
    rows = []
    for t in sorted(turns, key=lambda t: t.started_s):
        s = t.stats
        audio = (
            [round(s.first_audio_s, 3), round(s.playable_s, 3), round(s.startup_slack_s, 3), round(s.worst_audio_s, 2)]
            if s
            else [None] * 4
        )
        rows.append([t.session, round(t.started_s, 3), t.status, *audio])
    return rows


def timeline_row(t_s: float, stats: dict) -> list:
    return [
        round(t_s, 2),
        stats.get("admission_limit"),
        stats.get("admission_active"),
        stats.get("admission_queued"),
        stats.get("decoder_sessions"),
        stats.get("decoder_underruns"),
        stats.get("decoder_settled_underruns"),
        stats.get("decoder_near_misses"),
    ]


async def traced(
    run: Callable[[], Awaitable], read_stats: Callable[[], Awaitable[dict]], every_s: float = 1.0
) -> tuple[object, OverloadTrace]:
    """Run `run()` (an overload: its result has `.turns`) while sampling `read_stats()` every `every_s`."""
    trace = OverloadTrace()
    start = time.perf_counter()

    async def sample_once() -> None:
        try:
            stats = await read_stats()
        except Exception:  # noqa: BLE001 - a missed sample must not stop the run; the row says so
            stats = {}
        trace.timeline.append(timeline_row(time.perf_counter() - start, stats))

    async def sample() -> None:
        while True:
            await sample_once()
            await asyncio.sleep(every_s)

    sampler = asyncio.create_task(sample())
    try:
        result = await run()
    finally:
        sampler.cancel()
        try:
            await sampler
        except asyncio.CancelledError:
            pass
    await sample_once()  # the state the run left (also the only row of a run shorter than a sample)
    trace.turns = turn_rows(getattr(result, "turns", []))
    return result, trace


def gap_free_by_running(trace: dict, bucket: int = 8, slack_s: float = JITTER_BUFFER_S) -> list[dict]:
    """Admitted turns grouped by how many requests were running when each was sent (the last sample before it),
    with the fraction that stayed gap-free (start-up slack <= `slack_s`): the running count past which admitted
    turns begin to stutter is the capacity admission control should find."""
    timeline = [row for row in trace["timeline"] if row[2] is not None]
    groups: dict[int, list[bool]] = {}
    for _, started, status, _, _, slack, *_ in trace["turns"]:  # traces before worst_audio_s have 6 fields
        if status != 200 or slack is None or not timeline:
            continue
        before = [row for row in timeline if row[0] <= started] or timeline[:1]
        running = before[-1][2]
        groups.setdefault(running // bucket * bucket, []).append(slack <= slack_s)
    return [
        {"running": f"{lo}-{lo + bucket - 1}", "turns": len(ok), "gap_free": round(sum(ok) / len(ok), 3)}
        for lo, ok in sorted(groups.items())
    ]


def main(argv: list[str] | None = None) -> None:
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(description="Admitted turns' gap-free fraction by running requests, per overload.")
    p.add_argument("suite_json", type=Path)
    args = p.parse_args(argv)
    doc = json.loads(args.suite_json.read_text())
    for run in [doc.get("defaults") or {}, *(doc.get("configs") or [])]:
        for label, trace in (run.get("overload_traces") or {}).items():
            print(f"{run.get('name')}: {label}")
            for row in gap_free_by_running(trace):
                print(f"  running {row['running']:>7}: {row['turns']:4d} turns, {row['gap_free']:.0%} gap-free")


if __name__ == "__main__":
    main()
