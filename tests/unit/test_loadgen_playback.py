"""The listener's measure (bench/playback.py) on hand-made chunk arrival times: no server, no model."""

from __future__ import annotations

import pytest

from bench.playback import (
    JITTER_BUFFER_S,
    REALTIME_PLAYABLE_S,
    TurnResult,
    is_realtime,
    level_summary,
    overload_summary,
    playback_stats,
)


def steady(first: float, n: int, chunk_s: float, every: float) -> list[tuple[float, float]]:
    return [(first + k * every, chunk_s) for k in range(n)]


def turn(arrivals: list[tuple[float, float]], status: int = 200, **kw) -> TurnResult:
    return TurnResult(status=status, arrivals=arrivals, completion_tokens=kw.pop("tokens", 39), **kw)


def test_steady_stream_ahead_of_playback_is_playable_at_first_audio():
    # 0.4 s chunks every 0.2 s: the buffer only grows
    stats = playback_stats(steady(0.3, 10, 0.4, 0.2))
    assert stats is not None
    assert stats.first_audio_s == pytest.approx(0.3)
    assert stats.playable_s == pytest.approx(0.3)
    assert stats.gaps == 0 and stats.gap_s == 0
    assert stats.audio_s == pytest.approx(4.0)
    assert stats.last_audio_s == pytest.approx(2.1)
    assert stats.answer_ratio == pytest.approx(2.1 / 4.0)
    assert stats.chunks == 10


def test_exactly_real_time_stream_has_no_gap():
    # each chunk arrives the moment the one before has finished playing
    stats = playback_stats(steady(0.5, 5, 0.4, 0.4))
    assert stats.playable_s == pytest.approx(0.5)
    assert stats.gaps == 0


def test_gap_in_the_middle():
    # 0.4 s plays from 0.4 to 0.8; the next chunk arrives at 1.8: 1.0 s of silence
    arrivals = [(0.4, 0.4), (1.8, 0.4), (1.9, 2.0)]
    stats = playback_stats(arrivals)
    assert stats.first_audio_s == pytest.approx(0.4)
    assert stats.playable_s == pytest.approx(1.4)  # 1.8 - 0.4 s of audio before it
    assert stats.worst_audio_s == pytest.approx(0.4)  # the stutter came after 0.4 s of audio
    assert stats.gaps == 1
    assert stats.gap_s == pytest.approx(1.0)
    # after the pause playback resumes at 1.8 and the third chunk is on time
    assert stats.answer_ratio == pytest.approx(1.9 / 2.8)


def test_late_first_chunk_then_steady():
    stats = playback_stats([(2.5, 0.4)] + steady(2.6, 5, 0.4, 0.3))
    assert stats.first_audio_s == pytest.approx(2.5)
    assert stats.playable_s == pytest.approx(2.5)
    assert stats.worst_audio_s == 0.0  # the first chunk set it
    assert stats.gaps == 0
    assert not is_realtime([turn([(2.5, 0.4)] + steady(2.6, 5, 0.4, 0.3))])


def test_one_chunk():
    stats = playback_stats([(0.7, 1.5)])
    assert stats.first_audio_s == stats.playable_s == stats.last_audio_s == pytest.approx(0.7)
    assert stats.gaps == 0 and stats.chunks == 1
    assert stats.answer_ratio == pytest.approx(0.7 / 1.5)


def test_bursty_arrivals():
    # bursts of three 0.2 s chunks every 1.0 s: each burst plays 0.6 s, then 0.4 s of silence until the next
    arrivals = [(b * 1.0 + 0.2 + k * 0.01, 0.2) for b in range(4) for k in range(3)]
    stats = playback_stats(arrivals)
    assert stats.gaps == 3
    assert stats.gap_s == pytest.approx(3 * (1.0 - 0.6))
    # the last burst starts at 3.2 with 1.8 s before it: 3.2 - 1.8 = 1.4
    assert stats.playable_s == pytest.approx(1.4)
    assert stats.startup_slack_s == pytest.approx(1.2)


def test_no_audio_and_empty_chunks():
    assert playback_stats([]) is None
    assert playback_stats([(0.5, 0.0)]) is None
    assert playback_stats([(0.5, 0.0), (0.6, 0.3)]).first_audio_s == pytest.approx(0.6)
    assert not turn([]).ok


def test_level_rule():
    good = [turn(steady(0.2 + 0.1 * i, 5, 0.4, 0.3)) for i in range(4)]
    assert is_realtime(good)
    edge = turn([(REALTIME_PLAYABLE_S, 0.4), (REALTIME_PLAYABLE_S + 0.4, 0.4)])
    assert is_realtime(good + [edge])  # at most 1.0 s is real time
    late = turn([(0.2, 0.4), (REALTIME_PLAYABLE_S + 0.41, 0.4)])  # playable 1.01 s
    assert not is_realtime(good + [late])
    assert not is_realtime(good + [turn([], status=500, error="boom")])
    assert not is_realtime(good + [TurnResult(status=200, error="stream died", arrivals=steady(0.2, 3, 0.4, 0.1))])
    assert not is_realtime([])

    summary = level_summary(5, good + [late], wall_s=2.0)
    assert summary.turns == summary.ok == 5
    assert summary.realtime is False
    assert summary.streams_with_gap == 1
    assert summary.playable_ms.max == pytest.approx(1010.0)
    assert summary.first_audio_ms.p50 == pytest.approx(300.0)
    assert summary.tokens_per_s == pytest.approx(5 * 39 / 2.0)
    assert summary.errors == {}

    failed = level_summary(2, [good[0], turn([], status=503, error="draining")], wall_s=1.0)
    assert failed.errors == {"503": 1} and failed.ok == 1 and not failed.realtime


def test_overload_summary():
    queued_then_smooth = turn([(3.0, 0.4)] + steady(3.1, 5, 0.4, 0.3))  # waited in the queue: gap-free, not strict
    smooth = turn(steady(0.3, 5, 0.4, 0.3))
    gappy = turn([(0.3, 0.4), (0.3 + 0.4 + JITTER_BUFFER_S + 0.1, 0.4)])
    just_in = turn([(0.3, 0.4), (0.3 + 0.4 + JITTER_BUFFER_S, 0.4)])
    rejected = [TurnResult(status=429, error="busy", retry_after_s=r) for r in (1.0, 3.0)]
    died = TurnResult(status=200, error="engine error", arrivals=[(0.3, 0.4)])
    refused = TurnResult(status=0, error="ConnectError: refused")
    turns = [queued_then_smooth, smooth, gappy, just_in, died, refused, *rejected]
    s = overload_summary(sessions=4, seconds=60, turns=turns, wall_s=10.0)
    assert s.offered == 8
    assert s.admitted == 5
    assert s.rejected_429 == 2
    assert s.errors_other_than_429 == 2
    assert s.errors == {"engine error": 1, "ConnectError: refused": 1}
    assert s.gap_free_admitted == 3
    assert s.gap_free_fraction_of_admitted == pytest.approx(3 / 5)
    assert s.strict_realtime_admitted == 3  # the queued turn's 3.0 s start misses the strict rule
    assert s.strict_realtime_fraction_of_admitted == pytest.approx(3 / 5)
    assert s.retry_after_s.max == pytest.approx(3.0)
    assert s.completion_tokens == 4 * 39

    empty = overload_summary(sessions=2, seconds=5, turns=rejected, wall_s=5.0)
    assert empty.admitted == 0 and empty.gap_free_fraction_of_admitted is None


@pytest.mark.parametrize(("stagger", "spread_at_least"), [(None, 0.0), (2.0, 1.0)])
def test_overload_sessions_start_within_the_stagger(monkeypatch: pytest.MonkeyPatch, stagger, spread_at_least):
    """Sessions start within --ramp (in step) or within --overload-stagger (users arriving at different times)."""
    import asyncio

    from bench import loadgen

    async def fake_turn(client, args, wav_b64, record, on_chunk) -> None:
        record.status = 200
        await asyncio.sleep(0.05)

    monkeypatch.setattr(loadgen, "run_turn", fake_turn)
    argv = ["--ramp", "0.05"] + ([] if stagger is None else ["--overload-stagger", str(stagger)])
    result = asyncio.run(loadgen.run_overload("http://127.0.0.1:9", 12, 2.2, loadgen.parse_args(argv), ""))
    firsts = [min(t.started_s for t in result.turns if t.session == i) for i in range(12)]
    limit = 0.05 if stagger is None else stagger
    assert max(firsts) <= limit + 1.5  # a loaded machine's event loop may start a session late (1.02 s seen on CI)
    assert max(firsts) - min(firsts) >= spread_at_least


def test_a_lone_user_runs_separate_conversations_in_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """--lone-turns: level 1's p50 is a median of that many first audios (no chained audio ids); other levels keep
    --turns turns per session, each after the previous reply (audio.id)."""
    import asyncio

    from bench import loadgen

    calls: list[tuple[int, str | None]] = []

    async def fake_turn(client, args, wav_b64, result, previous_audio_id) -> str:
        result.status = 200
        calls.append((result.session, previous_audio_id))
        return f"audio_{result.session}_{result.turn}"

    monkeypatch.setattr(loadgen, "run_turn", fake_turn)
    args = loadgen.parse_args(["--ramp", "0", "--turns", "2", "--lone-turns", "5"])
    lone = asyncio.run(loadgen.run_level("http://127.0.0.1:9", 1, args, ""))
    assert [t.turn for t in lone.turns] == [0, 1, 2, 3, 4]
    assert calls == [(0, None)] * 5
    calls.clear()
    pair = asyncio.run(loadgen.run_level("http://127.0.0.1:9", 2, args, ""))
    assert len(pair.turns) == 4
    assert sorted(calls, key=lambda c: (c[0], c[1] or "")) == [(0, None), (0, "audio_0_0"), (1, None), (1, "audio_1_0")]


def test_a_200_without_audio_says_how_far_its_stream_got() -> None:
    """A suite run saw one 200 whose stream carried no audio and no error (H100, 2026-12-06): its error key now says
    whether events and the transcript arrived and whether the stream ended with [DONE]."""
    empty = TurnResult(status=200)
    assert not empty.ok and empty.error_key() == "no audio (0 events, no [DONE])"
    text_only = TurnResult(status=200, events=14, first_text_s=0.1, done=True)
    assert text_only.error_key() == "no audio (14 events, text, [DONE])"
    assert TurnResult(status=200, error="boom").error_key() == "boom" and TurnResult(status=429).error_key() == "429"
