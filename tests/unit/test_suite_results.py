"""The GPU suite's bookkeeping (bench/suite_results.py): --config parsing, the GPU split, the headline figures."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from bench.playback import TurnResult, level_summary, overload_summary
from bench.suite_results import (
    ConfigRun,
    ConfigSpec,
    GpuSplit,
    ServerStats,
    SuiteLevel,
    realtime_streams,
    write_results,
)


def test_config_spec_parse():
    spec = ConfigSpec.parse(
        "fp8:ENGINE__QUANTIZATION=fp8,speech_decoder__schedule=[10,20,40],GLM4VOICE_LOG__LEVEL=info"
    )
    assert spec.name == "fp8"
    assert spec.overrides == {
        "ENGINE__QUANTIZATION": "fp8",
        "SPEECH_DECODER__SCHEDULE": "[10,20,40]",
        "LOG__LEVEL": "info",
    }
    for bad in ("fp8", "fp8:", ":A=1", "fp8:A"):
        with pytest.raises(ValueError):
            ConfigSpec.parse(bad)
    # a server's --config: what is no server setting would measure the defaults under another name (ignored)
    assert ConfigSpec.parse_server("fp8:ENGINE__QUANTIZATION=fp8").overrides == {"ENGINE__QUANTIZATION": "fp8"}
    for bad in ("probe10:CAPACITY__PROBE_S=10", "x:ENGINE__MAX_NUM_SEQ=8"):
        with pytest.raises(argparse.ArgumentTypeError, match="not server settings"):
            ConfigSpec.parse_server(bad)


def test_gpu_split_tolerates_missing_figures():
    before = ServerStats(llm_busy_s=10.0, decoder_busy_s=2.0, decoder_batches=10, decoder_chunks=40)
    after = ServerStats(llm_busy_s=15.0, decoder_busy_s=4.0, decoder_batches=20, decoder_chunks=120)
    split = GpuSplit.between(before, after, wall_s=10.0)
    assert split.llm_busy_s == 5.0 and split.llm_busy_fraction == 0.5
    assert split.decoder_busy_fraction == 0.2
    assert split.decoder_mean_batch == 8.0
    assert split.tokenizer_busy_s is None and split.graph_captures is None
    assert ServerStats.from_json({"llm_busy_s": 1.0, "renamed": 3}).llm_busy_s == 1.0


def _level(concurrency: int, playable: float) -> TurnResult:
    return TurnResult(status=200, arrivals=[(0.2, 0.4), (playable + 0.4, 0.4)])


def test_gpu_split_first_audio_split_is_a_mean_per_stream():
    before = ServerStats(first_chunks=2, first_supply_s=1.0, first_wait_s=0.5, first_pass_s=0.5)
    after = ServerStats(first_chunks=6, first_supply_s=2.2, first_wait_s=0.9, first_pass_s=1.7)
    split = GpuSplit.between(before, after, wall_s=10.0)
    assert split.first_audio_split_ms == {"supply": 300.0, "wait": 100.0, "pass": 300.0}
    assert GpuSplit.between(before, before, wall_s=10.0).first_audio_split_ms is None  # no new stream: no split
    # With the server's own first audio (request received -> first bytes sent): the part outside the decoder's split.
    before = replace(before, first_audio_server_s=1.5, first_audio_server_n=2)
    after = replace(after, first_audio_server_s=4.5, first_audio_server_n=6)
    split = GpuSplit.between(before, after, wall_s=10.0)
    assert split.first_audio_split_ms == {
        "supply": 300.0,
        "wait": 100.0,
        "pass": 300.0,
        "server": 750.0,
        "outside": 50.0,
    }
    # Of `outside`: the wait before the reply starts, and of that the input audio (decoding + speech tokens).
    before = replace(before, reply_start_s=0.02, reply_start_n=2, audio_prepare_s=0.01, audio_prepare_n=2)
    after = replace(after, reply_start_s=0.1, reply_start_n=6, audio_prepare_s=0.05, audio_prepare_n=6)
    split = GpuSplit.between(before, after, wall_s=10.0).first_audio_split_ms
    assert split is not None and split["start"] == 20.0 and split["audio_in"] == 10.0


def test_bench_stats_reads_the_servers_first_audio_histogram():
    from bench.gpu_server import collect_stats
    from glm4voice_api.serving.metrics import Metrics

    metrics = Metrics()
    for seconds in (0.25, 0.35):
        metrics.first_audio.observe(seconds)
        metrics.reply_start.observe(seconds / 10)
    metrics.audio_prepare.observe(0.01)
    services = SimpleNamespace(chat=SimpleNamespace(replies=SimpleNamespace(metrics=metrics)))
    stats = collect_stats(services, None)
    assert stats["first_audio_server_n"] == 2 and abs(stats["first_audio_server_s"] - 0.6) < 1e-9
    assert stats["reply_start_n"] == 2 and abs(stats["reply_start_s"] - 0.06) < 1e-9
    assert stats["audio_prepare_n"] == 1 and abs(stats["audio_prepare_s"] - 0.01) < 1e-9
    assert collect_stats(None, None)["first_audio_server_s"] is None  # a server without it: None, never an error


def test_realtime_streams_needs_every_smaller_level():
    levels = [
        level_summary(c, [_level(c, p)] * c, 1.0)
        for c, p in ((1, 0.3), (16, 0.9), (32, 1.2), (64, 0.8))  # 64 passing alone does not count
    ]
    assert realtime_streams(levels) == 16
    assert realtime_streams([]) == 0


def test_latest_json_layout(tmp_path):
    run = ConfigRun(name="defaults", settings={"GLM4VOICE_ENGINE__LOAD_FORMAT": "dummy"}, defaults=True, ready_s=80.04)
    for c in (1, 32):
        run.levels.append(SuiteLevel(level_summary(c, [_level(c, 0.5)] * c, 5.0), GpuSplit(), admission_limit=64))
    run.overload = overload_summary(64, 60, [_level(1, 0.4), TurnResult(status=429, retry_after_s=1)], 61.0)
    run.baseline = [level_summary(1, [_level(1, 0.9)], 20.0), level_summary(2, [_level(2, 2.0)] * 2, 40.0)]
    write_results(tmp_path, [run], "NVIDIA H100", {"settings": {"max_tokens": 390}})
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert latest["defaults"] is True
    assert latest["realtime_streams"] == 32
    assert latest["playable_p50_ms_at_32"] == 500.0 and latest["playable_p99_ms_at_32"] == 500.0
    assert latest["ttfa_p50_ms_at_1"] == 200.0
    assert latest["baseline_realtime_streams"] == 1
    assert latest["ready_s"] == 80.0
    overload = latest["overload"]
    assert (overload["offered"], overload["admitted"], overload["rejected_429"]) == (2, 1, 1)
    assert overload["gap_free_fraction_of_admitted"] == 1.0 and overload["errors_other_than_429"] == 0
    assert latest["settings"]["max_tokens"] == 390 and "realtime" in latest["definitions"]
    full = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert full["defaults"]["levels"][1]["admission_limit"] == 64
    assert full["configs"] == []


def test_decoder_passes_are_paged_per_scheduler_and_written_per_phase(tmp_path, monkeypatch):
    import asyncio
    from collections import deque
    from types import SimpleNamespace

    from bench import gpu_suite
    from bench.gpu_server import collect_passes
    from glm4voice_api.pipeline.pass_cost import PassRecord

    log = deque((PassRecord(float(i), 0.1, 1 + i, 50, 10, 0, 0, False) for i in range(5)), maxlen=3)
    rt = SimpleNamespace(decoder=SimpleNamespace(schedulers=[SimpleNamespace(pass_log=log, batches=5)]))
    assert [p[2] for p in collect_passes(rt, [3])["schedulers"][0]["passes"]] == [4, 5]  # the 4th and 5th pass
    assert len(collect_passes(rt, [])["schedulers"][0]["passes"]) == 3  # what the bounded log still holds
    assert collect_passes(rt, [5])["schedulers"][0]["passes"] == []

    calls = []

    async def fake_passes(url, since):
        calls.append(list(since))
        return collect_passes(rt, since)

    monkeypatch.setattr(gpu_suite, "server_passes", fake_passes)
    suite = gpu_suite.Suite(gpu_suite.parse_args(["--out", str(tmp_path)]))
    run = SimpleNamespace(name="defaults")
    asyncio.run(suite.record_passes(run, "http://x", "level 16"))
    asyncio.run(suite.record_passes(run, "http://x", "level 32"))
    suite.write()
    assert calls == [[], [5]]  # the second call asks only for what came after the first
    written = json.loads((tmp_path / "gpu_passes.json").read_text())
    phases = written["configs"]["defaults"]
    assert [p["phase"] for p in phases] == ["level 16", "level 32"]
    assert len(phases[0]["schedulers"][0]) == 3 and phases[1]["schedulers"][0] == []


def test_gpu_split_thread_cpu_is_a_share_of_the_wall_time():
    before = ServerStats(thread_cpu_s={"main": 1.0, "decoder": 2.0})
    after = ServerStats(thread_cpu_s={"main": 3.0, "decoder": 9.0, "engine": 5.0})  # a thread that came meanwhile
    split = GpuSplit.between(before, after, wall_s=10.0)
    assert split.thread_cpu_fraction == {"decoder": 0.7, "engine": 0.5, "main": 0.2}
    assert GpuSplit.between(ServerStats(), after, wall_s=10.0).thread_cpu_fraction is None


def test_thread_cpu_seconds_by_role_grow_with_a_busy_thread():
    import threading
    import time

    from glm4voice_api.pipeline.thread_cpu import thread_cpu_seconds

    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin, name="decoder-scheduler")  # the decoder's thread name: role "decoder"
    worker.start()
    try:
        first = thread_cpu_seconds()
        time.sleep(0.5)
        second = thread_cpu_seconds()
    finally:
        stop.set()
        worker.join()
    assert "main" in first and second["decoder"] - first.get("decoder", 0.0) > 0.05
