"""The adaptive chunk policy: first chunk early, small chunks while the buffer is thin, long ones once ahead, and
never a wait for tokens that arrive after the buffer runs low."""

from __future__ import annotations

import pytest

from glm4voice_api.pipeline.chunk_policy import AdaptiveChunkPolicy, FixedSchedule, StreamView

POLICY = AdaptiveChunkPolicy(first_chunk=10, max_chunk=160, lead_s=0.3)


def view(
    pending: int, buffered: float, started: bool = True, decoded: int = 40, rate: float | None = None
) -> StreamView:
    return StreamView(pending=pending, started=started, buffered_s=buffered, decoded=decoded, rate=rate)


def test_first_chunk_as_soon_as_it_is_there() -> None:
    assert POLICY.chunk_size(view(9, 0.0, started=False), 0.1) is None
    assert POLICY.chunk_size(view(14, 0.0, started=False), 0.1) == 10
    assert POLICY.wake_in(view(14, 0.0, started=False), 0.1) is None  # only tokens make it due


def test_thin_buffer_decodes_what_it_has() -> None:
    assert POLICY.chunk_size(view(7, 0.35), 0.1) == 7  # 0.35 <= lead 0.3 + pass 0.1: all it has
    assert POLICY.chunk_size(view(5, 0.0), 0.1) is None  # below the 6-token minimum: nothing can be decoded
    assert POLICY.chunk_size(view(300, 0.1), 0.1) == 160  # never more than max_chunk


def test_ahead_waits_for_a_chunk_as_long_as_the_buffer() -> None:
    assert POLICY.target(2.0) == 25  # 2 s buffered -> 25 tokens (2 s of audio)
    assert POLICY.chunk_size(view(20, 2.0), 0.1) is None
    assert POLICY.chunk_size(view(26, 2.0), 0.1) == 26  # due: takes all it has
    assert POLICY.chunk_size(view(39, 2.0), 0.1) == 39  # any length: flow and HiFT pad rows of any length
    assert POLICY.target(60.0) == 160 and POLICY.target(0.2) == 10
    assert POLICY.wake_in(view(20, 2.0), 0.1) == pytest.approx(1.6)  # wakes when 0.4 s are left


def test_a_chunk_does_not_wait_for_tokens_that_come_too_late() -> None:
    # 2 s buffered wants 25 tokens; 20 are there. At 30 tokens/s the 5 missing come in 0.17 s: worth waiting.
    assert POLICY.chunk_size(view(20, 2.0, rate=30.0), 0.1) is None
    assert POLICY.wake_in(view(20, 2.0, rate=30.0), 0.1) == pytest.approx(1.6 - 5 / 30)
    # At 3 tokens/s (the model is writing a text block) they would come after the buffer is down to the lead.
    assert POLICY.chunk_size(view(20, 2.0, rate=3.0), 0.1) == 20
    # Thin buffer after a first chunk (0.5 s), 8 tokens there and a 10-token target: 2 tokens at 20/s = 0.1 s
    # < 0.1 s slack? No: slack is 0.5 - 0.3 - 0.1 = 0.1, so it goes now rather than cut it that fine.
    assert POLICY.chunk_size(view(8, 0.5, rate=20.0), 0.1) == 8
    assert POLICY.chunk_size(view(8, 0.5, rate=40.0), 0.1) is None  # 0.05 s away: waits


def test_urgency_orders_dry_streams_and_first_chunks_first() -> None:
    keys = [POLICY.urgency(v) for v in (view(10, 3.0), view(10, 0.0, started=False), view(10, -0.2))]
    assert sorted(range(3), key=keys.__getitem__) == [2, 1, 0]


def test_a_fixed_schedules_first_chunks_lead_or_rank_as_set() -> None:
    """Default: a first chunk before every started stream. With first_rank_s, a listener with less audio left goes
    first (bench/sim_schedule.py --chunking fixed@0.5 ranks it)."""
    first, dry, ahead = view(10, 0.0, started=False), view(26, 0.1), view(26, 1.0)
    default = FixedSchedule((10, 20))
    assert default.urgency(first) < default.urgency(dry) < default.urgency(ahead)
    ranked = FixedSchedule((10, 20), first_rank_s=0.3)
    assert ranked.urgency(dry) < ranked.urgency(first) < ranked.urgency(ahead)


def test_fixed_schedule_counts_chunks_from_decoded_tokens() -> None:
    fixed = FixedSchedule((10, 20))
    assert fixed.chunk_size(view(10, 0, decoded=0), 0) == 10
    assert fixed.chunk_size(view(19, 0, decoded=10), 0) is None
    assert fixed.chunk_size(view(25, 0, decoded=30), 0) == 20  # the last step repeats


def test_riders_need_a_steady_chunk() -> None:
    assert POLICY.rider_size(view(9, 1.0)) is None
    assert POLICY.rider_size(view(70, 1.0)) == 70
    assert POLICY.rider_size(view(700, 1.0)) == 160
    assert POLICY.rider_size(view(70, 1.0, started=False)) is None


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError):
        AdaptiveChunkPolicy(first_chunk=5)
