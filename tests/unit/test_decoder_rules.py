"""Decoder rules on a running decoder (pipeline/decoder_rules.py, bench/gpu_server.py's /bench/reconfigure): they
change only between streams, and a decoder given new rules decodes as a fresh one loaded with them."""

from __future__ import annotations

import asyncio
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from glm4voice_api.config import Settings, SpeechDecoderSettings
from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig
from glm4voice_api.pipeline.chunk_policy import AdaptiveChunkPolicy, FixedSchedule
from glm4voice_api.pipeline.decoder_rules import RULES, apply_rules
from glm4voice_api.pipeline.decoder_scheduler import DecoderScheduler
from glm4voice_api.serving.admission import AdmissionQueue
from glm4voice_api.serving.capacity import CapacityController
from tests.conftest import CONFORMANCE

TINY = CONFORMANCE / "tiny_a" / "speech_decoder"
pytestmark = pytest.mark.usefixtures("conformance")  # fails, never skips, without the goldens


def _decode(decoder, tokens: list[int], config: DecoderStreamConfig) -> np.ndarray:
    with decoder.open_stream(config=config) as stream:
        return np.concatenate([stream.feed(tokens[:30]), stream.feed(tokens[30:], final=True)])


async def _opened(scheduler: DecoderScheduler):
    return scheduler.open_stream()


def test_rules_change_between_streams_and_decode_as_a_fresh_decoder_would() -> None:
    decoder = load_speech_decoder(TINY)
    scheduler = DecoderScheduler(decoder, DecoderStreamConfig(schedule=(10, 20)), policy=FixedSchedule((10, 20)))
    options = SpeechDecoderSettings(chunking="adaptive", hold=True, ode_steps=3, max_prompt_tokens=30, max_pass_ms=250)

    scheduler.start()
    loop = asyncio.new_event_loop()  # a stream belongs to an event loop; this one outlives the stream
    try:
        stream = loop.run_until_complete(_opened(scheduler))
        with pytest.raises(RuntimeError, match="1 decoder streams are open"):
            apply_rules(scheduler, options)  # a stream's chunks follow one set of rules from start to end
        assert isinstance(scheduler.policy, FixedSchedule) and decoder.ode_steps == 10
        stream.close()
        deadline = time.monotonic() + 10
        while scheduler.active_streams() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        loop.run_until_complete(scheduler.close())
        loop.close()

    apply_rules(scheduler, options)
    assert isinstance(scheduler.policy, AdaptiveChunkPolicy) and scheduler.policy.max_chunk == 160
    assert scheduler.hold is not None and scheduler.max_pass_s == 0.25
    assert scheduler.stream_config.max_prompt_tokens == 30 and decoder.ode_steps == 3

    # The same audio as a decoder loaded with 3 ODE steps from the start, and as the reference's 10 once set back.
    tokens = np.random.default_rng(3).integers(0, 16384, 57).tolist()
    config = scheduler.stream_config
    np.testing.assert_array_equal(
        _decode(decoder, tokens, config), _decode(load_speech_decoder(TINY, ode_steps=3), tokens, config)
    )
    apply_rules(scheduler, SpeechDecoderSettings(ode_steps=10))
    assert isinstance(scheduler.policy, FixedSchedule) and scheduler.hold is None and scheduler.max_pass_s is None
    np.testing.assert_array_equal(_decode(decoder, tokens, config), _decode(load_speech_decoder(TINY), tokens, config))
    with pytest.raises(ValueError, match="ode_steps"):
        decoder.set_ode_steps(0)


def test_graph_batch_sizes_are_a_rule() -> None:
    decoder = load_speech_decoder(TINY)
    decoder.flow.enable_graphs(use_graphs=False)  # the buckets without the capture (CPU)
    scheduler = DecoderScheduler(decoder)
    assert decoder.batch_buckets == (1, 2, 4, 8, 16, 32)  # the default: powers of two
    apply_rules(scheduler, SpeechDecoderSettings(graph_batches=[1, 2, 4, 8, 16, 24, 32]))
    assert decoder.batch_buckets == (1, 2, 4, 8, 16, 24, 32) and decoder.flow.graphed.bucket(20, 1)[0] == 24
    apply_rules(scheduler, SpeechDecoderSettings())
    assert decoder.batch_buckets == (1, 2, 4, 8, 16, 32)
    with pytest.raises(ValidationError):
        SpeechDecoderSettings(graph_batches=[0, 8])


def test_reconfigure_route_applies_the_server_settings_plus_the_changes_and_restarts_admission() -> None:
    from bench.gpu_server import build

    settings = Settings(speech_decoder=SpeechDecoderSettings(max_prompt_tokens=50))
    app = build(settings)  # no lifespan: the runtime below stands in for the loaded models
    decoder = load_speech_decoder(TINY)
    scheduler = DecoderScheduler(decoder)
    controller, queue = CapacityController(ceiling=256, initial=48), AdmissionQueue(48, max_queued=8, max_wait_s=1.0)
    controller.limit, controller.knee = 12, 14  # what an earlier overload taught it
    queue.set_limit(12)
    waits: list[float] = []  # the tokenizer worker's batching wait, as set
    worker = SimpleNamespace(set_max_wait_ms=waits.append)
    app.state.runtime = SimpleNamespace(
        settings=settings, decoder=scheduler, audio_input=SimpleNamespace(worker=worker)
    )
    app.state.capacity = controller
    app.state.services = SimpleNamespace(admission=SimpleNamespace(queue=queue))
    client = TestClient(app)

    got = client.post("/bench/reconfigure", json={"speech_decoder": {"chunking": "adaptive", "ode_steps": 3}})
    assert got.status_code == 200, got.text
    rules = got.json()["speech_decoder"]
    assert set(rules) == set(RULES)
    assert rules["chunking"] == "adaptive" and rules["ode_steps"] == 3 and rules["max_prompt_tokens"] == 50
    assert got.json()["admission_limit"] == 48 and controller.knee is None and queue.max_active == 48
    assert decoder.ode_steps == 3 and isinstance(scheduler.policy, AdaptiveChunkPolicy)

    # Lists as the suite's --variant gives them (text); the graphs' batch sizes are a rule too.
    body = {"speech_decoder": {"schedule": "[10,20,40]", "graph_batches": "[1,2,4,8,16,24,32]"}}
    got = client.post("/bench/reconfigure", json=body).json()
    assert got["speech_decoder"]["schedule"] == [10, 20, 40] and scheduler.stream_config.schedule == (10, 20, 40)
    assert got["speech_decoder"]["graph_batches"] == [1, 2, 4, 8, 16, 24, 32]
    got = client.post("/bench/reconfigure", json={"speech_decoder": {"schedule": "10,8,8,26"}}).json()
    assert got["speech_decoder"]["schedule"] == [10, 8, 8, 26]  # the brackets may be left out
    assert client.post("/bench/reconfigure", json={"speech_decoder": {"schedule": "10,x"}}).status_code == 400
    back = client.post("/bench/reconfigure", json={"speech_decoder": {}}).json()
    # the app's controller as the server started it
    started = {"backoff": 0.7, "initial": 48, "settle_s": 3.0, "step": 0.0, "probe_s": 5.0, "near_miss_cut": 1}
    started |= {"start_hold_s": 3.0, "start_cut": 0, "start_window_s": 20.0}
    assert back["speech_decoder"]["ode_steps"] == 5 and back["capacity"] == started
    # Admission control's own rules: applied to the controller, which restarts; not named again: the server's own.
    body = {"capacity": {"backoff": "0.85", "initial": "16", "settle_s": 0, "step": "0.25", "near_miss_cut": "0"}}
    got = client.post("/bench/reconfigure", json=body).json()
    named = {"backoff": 0.85, "initial": 16, "settle_s": 0.0, "step": 0.25, "near_miss_cut": 0}
    assert got["capacity"] == {**started, **named} and controller.knee is None
    assert controller.step == 0.25 and controller.near_miss_cut == 0
    assert got["admission_limit"] == 16 and queue.max_active == 16
    back = client.post("/bench/reconfigure", json={}).json()
    assert back["capacity"] == started and back["admission_limit"] == 48
    assert back["speech_tokenizer"] == {"max_wait_ms": 0.0}  # the server's own
    got = client.post("/bench/reconfigure", json={"speech_tokenizer": {"max_wait_ms": 5}}).json()
    assert got["speech_tokenizer"] == {"max_wait_ms": 5.0} and waits[-1] == 5.0
    client.post("/bench/reconfigure", json={})
    assert waits[-1] == 0.0
    # Python's thread switch interval (process-wide), and back to the server's own (5 ms) when not named.
    saved = sys.getswitchinterval()
    try:
        got = client.post("/bench/reconfigure", json={"process": {"switch_interval_ms": "1"}}).json()
        assert got["process"] == {"switch_interval_ms": pytest.approx(1.0)}
        assert sys.getswitchinterval() == pytest.approx(0.001)
        for bad_process in (
            {"switch_interval_ms": 0},
            {"switch_interval_ms": "x"},
            {"switch_interval_ms": None},
            {"gc": 1},
        ):
            assert client.post("/bench/reconfigure", json={"process": bad_process}).status_code == 400, bad_process
        assert client.post("/bench/reconfigure", json={}).json()["process"] == {"switch_interval_ms": 5.0}
    finally:
        sys.setswitchinterval(saved)
    for bad_tokenizer in ({"max_wait_ms": -1}, {"max_batch": 4}):
        assert client.post("/bench/reconfigure", json={"speech_tokenizer": bad_tokenizer}).status_code == 400
    for bad_capacity in (
        {"backoff": 1.5},
        {"backoff": "x"},
        {"initial": 0},
        {"settle_s": -1},
        {"floor": 8},
        {"step": 2},
        {"near_miss_cut": -1},
    ):
        assert client.post("/bench/reconfigure", json={"capacity": bad_capacity}).status_code == 400, bad_capacity
    bad = client.post("/bench/reconfigure", json={"speech_decoder": {"dtype": "float16"}})
    assert bad.status_code == 400 and "dtype" in bad.json()["error"]  # needs a restart: not a per-stream rule
    assert client.post("/bench/reconfigure", json={"speech_decoder": {"ode_steps": 0}}).status_code == 400
    scheduler.active_streams = lambda: 1  # a stream still open (the real refusal is tested above)
    busy = client.post("/bench/reconfigure", json={})
    assert busy.status_code == 409 and "open" in busy.json()["error"]


def test_compile_outside_graphs_is_a_rule_that_a_cpu_decoder_keeps_eager() -> None:
    from glm4voice_api.models.speech_decoder.compiled import outside_graphs_compiled
    from glm4voice_api.pipeline.decoder_rules import set_outside_graphs_compiled

    decoder = load_speech_decoder(TINY)
    scheduler = DecoderScheduler(decoder)
    apply_rules(scheduler, SpeechDecoderSettings(compile_outside_graphs=True))
    set_outside_graphs_compiled(decoder, True)
    assert "compile_outside_graphs" in RULES and not outside_graphs_compiled(
        decoder
    )  # CPU: quick start, eager (compiled.py's test)


def test_hift_graphs_is_a_rule_that_a_cpu_decoder_keeps_eager() -> None:
    """On CUDA the rule captures HiFT's graphs; a CPU decoder keeps the unpadded eager pass (the graphs' padded path
    is tested eagerly in tests/models/test_hift_graphs.py)."""
    from glm4voice_api.pipeline.decoder_rules import set_hift_graphs

    decoder = load_speech_decoder(TINY)
    scheduler = DecoderScheduler(decoder)
    apply_rules(scheduler, SpeechDecoderSettings(hift_graphs=True))
    assert "hift_graphs" in RULES and decoder.hift_graphs is None
    assert set_hift_graphs(decoder, SpeechDecoderSettings(hift_graphs=True), 8) == 0 and decoder.hift_graphs is None
    assert not SpeechDecoderSettings().hift_graphs  # off by default (GPU.md session 24)


def test_hift_graphs_cover_only_small_passes() -> None:
    """With `hift_graphs` on, HiFT is graphed only for one-row passes of at most 256 mel frames (4 buckets of 64): a
    lone reply's first chunks, where launches dominate; longer or fuller passes run eager and unpadded."""
    from glm4voice_api.models.speech_decoder.hift_graphs import GraphedHiFT, HiFTGraphConfig
    from glm4voice_api.pipeline.decoder_rules import hift_graph_config

    decoder = load_speech_decoder(TINY)
    runner = GraphedHiFT(decoder.hift, HiFTGraphConfig(), use_graphs=False)
    runner.config = hift_graph_config(runner.config, SpeechDecoderSettings())
    graphed = [f for f in runner.frame_buckets(2048) if runner._graphable(runner.bucket(1, f))]
    assert graphed == [64, 128, 192, 256] and not runner._graphable(runner.bucket(2, 64))
    wider = hift_graph_config(runner.config, SpeechDecoderSettings(hift_graph_rows=2, hift_graph_frames=128))
    assert (wider.max_rows, wider.max_rows_frames) == (2, 256) and "hift_graph_frames" in RULES


def test_flow_front_graphs_is_a_rule_that_a_cpu_decoder_keeps_eager() -> None:
    """On CUDA (with the ODE's graphs) the rule captures the flow front's graphs; a CPU decoder keeps today's eager
    front (the graphs' padded path is tested eagerly in tests/models/test_flow_front_graphs.py)."""
    from glm4voice_api.pipeline.decoder_rules import set_flow_front_graphs

    decoder = load_speech_decoder(TINY)
    scheduler = DecoderScheduler(decoder)
    on = SpeechDecoderSettings(flow_front_graphs=True)
    apply_rules(scheduler, on)
    assert "flow_front_graphs" in RULES and decoder.flow.graphed_front is None
    assert set_flow_front_graphs(decoder, on, 8) == 0 and decoder.flow.graphed_front is None
    decoder.flow.enable_graphs(use_graphs=False)  # the ODE's buckets: still CPU, so still eager
    assert set_flow_front_graphs(decoder, on, 8) == 0 and decoder.flow.graphed_front is None
    assert not SpeechDecoderSettings().flow_front_graphs  # off by default


def test_profile_loop_route_reports_the_loop_threads_work_and_refuses_a_bad_duration() -> None:
    from bench.gpu_server import build

    client = TestClient(build(Settings()))  # no lifespan: the route needs no runtime
    got = client.post("/bench/profile_loop", json={"seconds": 0.05, "top": 5})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["seconds"] >= 0.05 and body["loop_cpu_s"] >= 0
    assert 0 < len(body["by_self"]) <= 5  # an idle loop: its time is in the poll (select.epoll), not CPU
    assert client.post("/bench/profile_loop", json={"seconds": 0}).status_code == 400
