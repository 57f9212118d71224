"""bench/sim_schedule.py: the real scheduler in simulated time delivers every turn's audio, and deadline batching
merges passes of streams that started together (the model's figures are not asserted: only what must hold)."""

from __future__ import annotations

import pytest

from bench.sim_costs import SAMPLE_RATE, SAMPLES_PER_TOKEN, CostModel, frame_bucket
from bench.sim_schedule import averaged, simulate

AUDIO_S = 260 * SAMPLES_PER_TOKEN / SAMPLE_RATE  # a 390-token reply: 10 blocks of 13 text + 26 audio tokens


@pytest.mark.parametrize("hold", [False, True])
@pytest.mark.parametrize("adaptive", [False, True])
def test_every_turn_gets_all_its_audio(hold: bool, adaptive: bool) -> None:
    r = simulate(8, 1.0, hold=hold, adaptive=adaptive, turns=2, seed=1)
    assert r.turns == 16
    assert r.passes > 0 and 1 <= r.rows_per_pass <= 8


def test_audio_arrives_in_full_and_in_order() -> None:
    from bench import sim_schedule

    seen = []
    original = sim_schedule._summarise

    def keep(world, *args):
        seen.extend(world.turns)
        return original(world, *args)

    sim_schedule._summarise = keep
    try:
        simulate(4, 1.0, hold=True, turns=1, seed=2)
    finally:
        sim_schedule._summarise = original
    for turn in seen:
        assert turn.stats.audio_s == pytest.approx(AUDIO_S)
        assert [t for t, _ in turn.arrivals] == sorted(t for t, _ in turn.arrivals)


def test_hold_merges_the_passes_of_a_burst() -> None:
    eager = averaged(2, streams=16, stagger_s=1.0, hold=False, turns=1)
    held = averaged(2, streams=16, stagger_s=1.0, hold=True, turns=1)
    assert held["passes"] < eager["passes"] and held["rows_per_pass"] > eager["rows_per_pass"]


def test_cost_model_pads_to_graph_buckets() -> None:
    cost = CostModel()
    assert frame_bucket(10) == 128 and frame_bucket(180) == 1280  # 69 and 1240 frames
    assert cost.pass_s(17, 180, beside_llm=False) == cost.pass_s(32, 180, beside_llm=False)
    assert cost.pass_s(1, 10, beside_llm=True) > cost.pass_s(1, 10, beside_llm=False)


def test_fit_recovers_the_pass_model_from_logged_passes(tmp_path) -> None:
    import json

    from bench.sim_costs import fit_passes

    cost = CostModel()
    passes = [
        [0.0, cost.sliced_fixed_s + 2.0 * cost.alone_cell_s * b * frame_bucket(n), r, n, 10, 0, 0, False]
        for r, b in ((1, 1), (3, 4), (9, 16), (20, 32))
        for n in (26, 104, 256)
    ]
    passes.append([0.0, 9.0, 1, 10, 10, 1, 0, True])  # nested passes are left out of the fit
    path = tmp_path / "gpu_passes.json"
    path.write_text(json.dumps({"configs": {"defaults": [{"phase": "level 16", "schedulers": [passes]}]}}))
    fit = fit_passes(str(path))
    assert fit["passes"] == 12
    assert fit["sliced_factor"] == pytest.approx(2.0, abs=1e-3)
    assert fit["sliced_fixed_s"] == pytest.approx(cost.sliced_fixed_s, abs=1e-4)


def test_controller_mode_runs_the_capacity_controller_in_simulated_time() -> None:
    """--controller: the real CapacityController sets the limit once a simulated second; a higher limit admits queued
    turns, no more replies run at once than the limit allowed, and every admitted turn gets its audio."""
    from bench.sim_admission import parse_controller

    spec = parse_controller("initial=4,step=0,settle_s=1,ceiling=12,interval_s=0.5")
    assert spec.fields == {"initial": 4, "step": 0.0, "settle_s": 1.0, "ceiling": 12} and spec.interval_s == 0.5
    assert parse_controller("default").build().limit == 32  # a GPU server's start: an eighth of 256
    with pytest.raises(ValueError, match="unknown field"):
        parse_controller("initail=4")
    r = simulate(16, 1.0, hold=False, seconds=6.0, turns=1, seed=3, controller=spec)
    a = r.admission
    assert a["offered"] == a["admitted"] == r.turns == 16 and a["refused"] == 0
    assert a["limit_min"] == 4 and 4 < a["limit_max"] <= 12
    assert a["peak_active"] <= a["limit_max"] and a["queue_wait_p90_s"] > 0


def test_a_wait_past_max_wait_is_refused_and_retried() -> None:
    r = simulate(8, 0.5, hold=False, seconds=3.0, seed=1, max_active=2, max_wait_s=1.0)
    a = r.admission
    assert a["peak_active"] == 2 and a["refused"] > 0
    assert a["offered"] == a["admitted"] + a["refused"] and a["queue_wait_p90_s"] <= 1.0


def test_a_first_pass_that_holds_the_llm_runs_alone_and_delays_the_llms_next_step() -> None:
    """`solo` (the step gate, plugins/glm4voice_vllm/step_gate.py): a lone reply's first pass at its alone speed."""
    beside = simulate(1, 0.0, hold=False, turns=1)
    held = simulate(1, 0.0, hold=False, turns=1, solo=(4, 0.0))
    assert held.first_audio_p50_ms < beside.first_audio_p50_ms and held.turns == beside.turns == 1
    burst = simulate(16, 1.0, hold=False, turns=1, solo=(4, 0.5))  # above 4 streams: on the share's budget
    assert burst.turns == 16 and burst.gap_free_fraction > 0


def test_a_schedule_and_where_the_stutters_are() -> None:
    """`--schedule` cuts the replies as the server would with that setting; each gapped turn reports where its
    listener ran dry (audio before the late chunk: the GPU's overloads stutter at the second chunk, 0.37 s)."""
    from bench import sim_schedule

    seen = []
    original = sim_schedule._summarise

    def keep(world, *args):
        seen.append(world.scheduler.stream_config.schedule)
        return original(world, *args)

    sim_schedule._summarise = keep
    try:
        r = simulate(24, 0.5, hold=False, turns=1, seed=4, schedule=(10, 8, 8, 26), cost=CostModel(slowdown=6.0))
    finally:
        sim_schedule._summarise = original
    assert seen == [(10, 8, 8, 26)] and r.turns == 24
    gapped = round((1 - r.gap_free_fraction) * r.turns)  # a slow LLM (slowdown 6): some listeners run dry
    assert 0 < len(r.stutter_at_s) == gapped and all(0 <= x < AUDIO_S for x in r.stutter_at_s)
    out = averaged(1, streams=4, stagger_s=1.0, hold=False, turns=1)
    assert "stutter_at_s" in out and sim_schedule.SCHEDULE == (10, 8, 8, 26, 52, 104, 156)  # the server's default


def test_first_company_reaches_the_scheduler_policy() -> None:
    """`--chunking fixed~C` (FixedSchedule.first_company_s) is the policy the simulated scheduler runs with."""
    from bench import sim_schedule

    seen = []
    original = sim_schedule._summarise

    def keep(world, *args):
        seen.append(world.scheduler.policy.first_company_s)
        return original(world, *args)

    sim_schedule._summarise = keep
    try:
        simulate(8, 0.5, hold=False, turns=1, seed=1, first_company_s=0.15)
    finally:
        sim_schedule._summarise = original
    assert seen == [0.15]
