"""The GPU suite's warm-server variants (bench/warm_variants.py): parsing, ABBA order, phases and pooled figures
(the server and the load generator replaced by fakes: the route itself is tested in test_decoder_rules.py)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from bench import gpu_suite, loadgen, warm_variants
from bench.playback import TurnResult
from bench.suite_results import ConfigRun, ServerStats
from bench.warm_variants import DEFAULTS, Variant, VariantRuns, round_order


def test_variant_parse_takes_only_decoder_rules():
    v = Variant.parse("ode5:SPEECH_DECODER__ODE_STEPS=5,SPEECH_DECODER__SCHEDULE=[10,20,40]")
    assert v == Variant("ode5", {"ode_steps": "5", "schedule": "[10,20,40]"})
    with pytest.raises(ValueError, match="only SPEECH_DECODER__"):
        Variant.parse("fp8:ENGINE__QUANTIZATION=fp8")  # the engine needs a fresh server: --config
    with pytest.raises(ValueError, match="always run"):
        Variant.parse("defaults:SPEECH_DECODER__HOLD=true")


def test_variant_may_change_admission_controls_backoff():
    v = Variant.parse("b85:CAPACITY__BACKOFF=0.85,SPEECH_DECODER__HOLD=true")
    assert v.rules == {"capacity__backoff": "0.85", "hold": "true"}
    body = warm_variants.reconfigure_body(v.rules)
    empty = {"speech_decoder": {}, "capacity": {}, "speech_tokenizer": {}, "process": {}}
    assert body == empty | {"speech_decoder": {"hold": "true"}, "capacity": {"backoff": "0.85"}}
    assert warm_variants.reconfigure_body({}) == empty
    v = Variant.parse("wait5:SPEECH_TOKENIZER__MAX_WAIT_MS=5,CAPACITY__SETTLE_S=3,SWITCH_INTERVAL_MS=1")
    assert warm_variants.reconfigure_body(v.rules) == {
        "speech_decoder": {}, "capacity": {"settle_s": "3"}, "speech_tokenizer": {"max_wait_ms": "5"},
        "process": {"switch_interval_ms": "1"},
    }  # fmt: skip
    with pytest.raises(ValueError, match="SWITCH_INTERVAL_MS change"):
        Variant.parse("x:LOG__LEVEL=debug")


def test_rounds_alternate_their_order():
    a, b = Variant("a", {"hold": "true"}), Variant("b", {"ode_steps": "5"})
    assert [v.name for v in round_order([a, b], 0)] == [DEFAULTS, "a", "b"]
    assert [v.name for v in round_order([a, b], 1)] == ["b", "a", DEFAULTS]
    assert round_order([a, b], 0)[0].rules == {}


def _turn(playable_s: float, status: int = 200) -> TurnResult:
    # First chunk at 0.2 s holding 0.4 s of audio, the second at playable_s + 0.4: playable latency = playable_s.
    return TurnResult(status=status, arrivals=[(0.2, 0.4), (playable_s + 0.4, 0.4)] if status == 200 else [])


def test_pooled_figures_take_every_round_and_keep_each_one():
    runs = VariantRuns()
    runs.add_level("a", 32, [_turn(0.5), _turn(0.7)], 10.0)
    runs.add_level("a", 32, [_turn(0.6), _turn(1.5)], 12.0)
    runs.add_overload("a", 32, 40.0, [_turn(0.3), _turn(0.4), _turn(0, status=429)], 41.0)
    runs.add_overload("a", 32, 40.0, [_turn(0.3)], 40.5)
    pooled = runs.pooled()["a"]
    level = pooled["levels"][0]
    assert level["concurrency"] == 32 and level["turns"] == 4 and level["playable_ms"]["max"] == 1500
    assert level["realtime"] is False and level["realtime_by_round"] == [True, False]
    assert level["playable_p50_ms_by_round"] == [600.0, 1050.0]
    over = pooled["overload"]
    assert over["offered"] == 4 and over["admitted"] == 3 and over["seconds"] == 80.0
    assert over["admitted_by_round"] == [2, 1] and over["gap_free_fraction_by_round"] == [1.0, 1.0]


def test_run_variants_runs_every_phase_on_the_warm_server_and_writes_them(tmp_path, monkeypatch):
    calls: list[dict] = []

    async def fake_reconfigure(url, rules, wait_s=120.0):
        calls.append(dict(rules))
        if rules.get("ode_steps") == "0":
            raise RuntimeError("/bench/reconfigure: 400")
        return {
            "speech_decoder": {"ode_steps": int(rules.get("ode_steps", 10))},
            "capacity": {"backoff": 0.7},
            "speech_tokenizer": {"max_wait_ms": 0.0},
            "process": {"switch_interval_ms": 5.0},
        }

    async def fake_level(url, concurrency, args, wav_b64):
        return loadgen.LevelResult(concurrency, 5.0, [_turn(0.4) for _ in range(concurrency)])

    async def fake_overload(url, sessions, seconds, args, wav_b64):
        return loadgen.OverloadResult(sessions, seconds, seconds, [_turn(0.4) for _ in range(sessions)])

    async def no_passes(url, since):
        return {}

    async def no_stats(url):
        return ServerStats()

    monkeypatch.setattr(warm_variants, "reconfigure", fake_reconfigure)
    monkeypatch.setattr(loadgen, "run_level", fake_level)
    monkeypatch.setattr(loadgen, "run_overload", fake_overload)
    monkeypatch.setattr(gpu_suite, "server_passes", no_passes)
    monkeypatch.setattr(gpu_suite, "server_stats", no_stats)

    async def raw_stats(url):
        return {"admission_limit": 64, "admission_active": 3, "admission_queued": 0, "decoder_sessions": 3}

    monkeypatch.setattr(gpu_suite, "server_stats_raw", raw_stats)
    args = gpu_suite.parse_args(
        ["--out", str(tmp_path), "--variant", "ode5:SPEECH_DECODER__ODE_STEPS=5"]
        + ["--variant", "broken:SPEECH_DECODER__ODE_STEPS=0", "--variant-levels", "2,4", "--variant-overload", "3"]
    )
    suite = gpu_suite.Suite(args)
    run = ConfigRun(name="defaults", settings={}, defaults=True)
    suite.runs.append(run)
    asyncio.run(warm_variants.run_variants(suite, run, "http://x", SimpleNamespace(), lambda m: None))

    assert calls == [{}, {"ode_steps": "5"}, {"ode_steps": "0"}, {"ode_steps": "0"}, {"ode_steps": "5"}, {}, {}]
    written = json.loads((tmp_path / "gpu_suite.json").read_text())["defaults"]["variants"]
    phases = written["phases"]
    assert [(p["variant"], p["round"]) for p in phases] == [
        ("defaults", 1), ("ode5", 1), ("broken", 1), ("broken", 2), ("ode5", 2), ("defaults", 2)
    ]  # fmt: skip
    rules = {"ode_steps": 5, "capacity__backoff": 0.7, "speech_tokenizer__max_wait_ms": 0.0, "switch_interval_ms": 5.0}
    assert phases[1]["rules"] == rules and [lv["concurrency"] for lv in phases[1]["levels"]] == [2, 4]
    assert phases[2]["error"].startswith("RuntimeError") and phases[2]["levels"] == []
    assert phases[0]["overload"]["admitted"] == 3
    assert set(written["pooled"]) == {"defaults", "ode5"}
    assert (
        written["pooled"]["ode5"]["levels"][1]["turns"] == 8 and written["pooled"]["ode5"]["overload"]["offered"] == 6
    )
    passes = json.loads((tmp_path / "gpu_passes.json").read_text())["configs"]["defaults"]
    assert passes[0]["phase"] == "defaults round 1 level 2" and len(passes) == 12
    # Every overload keeps the server's admission state over time and each turn (bench/overload_trace.py).
    traces = json.loads((tmp_path / "gpu_suite.json").read_text())["defaults"]["overload_traces"]
    assert set(traces) == {f"{v} round {r} overload 3" for v in ("defaults", "ode5") for r in (1, 2)}
    trace = traces["ode5 round 2 overload 3"]
    assert trace["timeline"][0][1:5] == [64, 3, 0, 3] and trace["turn_fields"][-2:] == ["slack_s", "worst_audio_s"]
    assert [row[2] for row in trace["turns"]] == [200, 200, 200] and trace["turns"][0][4] == 0.4


def test_comparison_table_wants_a_win_in_every_round():
    from bench.warm_variants import comparison_table

    def pooled(by_round):
        level = {"concurrency": 32, "playable_ms": {"p50": 900, "p99": 1200}, "playable_p99_ms_by_round": [1200, 1100]}
        return {
            "levels": [level],
            "overload": {"gap_free_fraction_of_admitted": 0.7, "gap_free_fraction_by_round": by_round},
        }

    variants = {
        "phases": [
            {"variant": "defaults", "rules": {"chunking": "fixed", "hold": False}},
            {"variant": "a", "rules": {"chunking": "adaptive", "hold": False}},
        ],
        "pooled": {"b": pooled([0.9, 0.5]), "a": pooled([0.8, 0.7]), "defaults": pooled([0.6, 0.6])},
    }
    rows = comparison_table(variants).splitlines()[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| defaults", "| a", "| b"]
    assert rows[1].endswith("| yes |") and "chunking=adaptive" in rows[1]
    assert rows[2].endswith("| no |")  # better in one round, worse in the other


def test_overload_trace_samples_while_the_run_lasts_and_keeps_every_turn():
    from bench.overload_trace import traced

    reads = []

    async def read_stats():
        reads.append(1)
        if len(reads) == 2:
            raise OSError("a missed sample")  # kept as a row of Nones, the run goes on
        counts = {"decoder_underruns": 3, "decoder_settled_underruns": 1, "decoder_near_misses": 2}
        return {"admission_limit": 20, "admission_active": len(reads)} | counts

    async def run():
        await asyncio.sleep(0.25)
        late = TurnResult(session=1, started_s=0.2, status=429)
        return SimpleNamespace(turns=[late, TurnResult(session=0, started_s=0.1, status=200, arrivals=[(0.3, 1.0)])])

    _, trace = asyncio.run(traced(run, read_stats, every_s=0.1))
    assert 3 <= len(trace.timeline) <= 5 and trace.timeline[0][1:3] == [20, 1] and trace.timeline[1][1] is None
    # all underruns, then what admission control cuts on: underruns of settled streams and near misses
    assert trace.timeline[0][5:] == [3, 1, 2] and len(trace.timeline[0]) == len(trace.to_json()["timeline_fields"])
    assert trace.turns == [[0, 0.1, 200, 0.3, 0.3, 0.0, 0.0], [1, 0.2, 429, None, None, None, None]]


def test_gap_free_by_running_groups_admitted_turns_by_the_load_they_met():
    from bench.overload_trace import gap_free_by_running

    trace = {
        "timeline": [[0.0, 64, 2, 0, 2, 0], [1.0, 64, 10, 0, 10, 0], [2.0, 64, None, None, None, None]],
        "turns": [
            [0, 0.5, 200, 0.3, 0.3, 0.0],  # sent while 2 ran: gap-free
            [1, 1.5, 200, 0.4, 1.4, 1.0],  # sent while 10 ran: stuttered
            [2, 2.5, 200, 0.4, 0.5, 0.1],  # the last real sample (10 running): within the jitter buffer
            [3, 2.6, 429, None, None, None],  # not admitted: not counted
        ],
    }
    assert gap_free_by_running(trace) == [
        {"running": "0-7", "turns": 1, "gap_free": 1.0},
        {"running": "8-15", "turns": 2, "gap_free": 0.5},
    ]


def test_the_ladder_profiles_the_event_loop_and_the_gpu_at_the_named_levels_only(tmp_path, monkeypatch):
    async def fake_level(url, concurrency, args, wav_b64):
        return loadgen.LevelResult(concurrency, 5.0, [_turn(0.4) for _ in range(concurrency)])

    profiled: list[tuple[str, float, float]] = []

    async def fake_post(url, route, delay_s, seconds, *, on=True):
        if not on:
            return {}
        profiled.append((route, delay_s, seconds))
        return {"loop_cpu_s": 1.5} if route.endswith("loop") else {"kernels": 7}

    async def nothing(*_args, **_kwargs):
        return {}

    async def no_stats(url):
        return ServerStats()

    monkeypatch.setattr(loadgen, "run_level", fake_level)
    monkeypatch.setattr(gpu_suite, "profile", fake_post)
    monkeypatch.setattr(gpu_suite, "server_passes", nothing)
    monkeypatch.setattr(gpu_suite, "server_stats", no_stats)
    levels = ["--levels", "1,4", "--profile-loop", "4", "--profile-gpu", "1"]
    args = gpu_suite.parse_args(["--out", str(tmp_path), "--warmup", "", *levels])
    suite = gpu_suite.Suite(args)
    run = ConfigRun(name="defaults", settings={}, defaults=False)
    suite.runs.append(run)
    asyncio.run(suite.run_config(run, "http://x", args.levels, extras=False))

    assert profiled == [("/bench/profile_gpu", 0.2, 2.0), ("/bench/profile_loop", 2.0, 5.0)]
    assert [lv.summary.concurrency for lv in run.levels] == [1, 4]
    written = json.loads((tmp_path / "gpu_suite.json").read_text())
    config = written["defaults"] if written.get("defaults") else written["configs"][0]
    assert config["gpu_profiles"] == {"1": {"kernels": 7}}
    assert config["loop_profiles"] == {"4": {"loop_cpu_s": 1.5}}
