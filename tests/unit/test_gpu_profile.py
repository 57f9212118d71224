"""The benchmarks' burst profile (pipeline/gpu_profile.py): a Chrome trace's device events summarized by CUDA stream
(hand-made traces), and the route that asks the model's process for one (bench/gpu_server.py, a CPU server answers
with an error, never a failure)."""

from __future__ import annotations

from types import SimpleNamespace

from fastapi.testclient import TestClient

from glm4voice_api.pipeline.gpu_profile import profile_window, summarize_trace


def _kernel(name: str, stream: int, ts: float, dur: float, cat: str = "kernel") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"device": 0, "stream": stream}}


def test_busy_overlap_and_top_kernels_by_stream() -> None:
    # Stream 7 (the LLM's) busy 0-600 us; stream 20 (the decoder's) 400-700 and 900-1000 us: overlap 200 us.
    trace = {
        "traceEvents": [
            _kernel("gemm", 7, 0, 300),
            _kernel("gemm", 7, 300, 200),
            _kernel("attention", 7, 500, 100),
            _kernel("flow_step", 20, 400, 300),
            _kernel("Memcpy DtoH", 20, 900, 100, cat="gpu_memcpy"),
            {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 5000},  # host work: not counted
            {"ph": "i", "cat": "kernel", "name": "marker", "ts": 10},  # not a complete event
        ]
    }
    got = summarize_trace(trace, seconds=0.002, top=1)
    assert got["kernels"] == 5 and got["window_ms"] == 2.0
    assert got["any_busy_ms"] == 0.8 and got["overlap_ms"] == 0.2
    llm, decoder = got["streams"]["0:7"], got["streams"]["0:20"]
    assert list(got["streams"]) == ["0:7", "0:20"]  # busiest first
    assert llm["busy_ms"] == 0.6 and llm["kernels"] == 3 and llm["busy_fraction"] == 0.3
    assert llm["top"] == [{"name": "gemm", "ms": 0.5}]
    assert decoder["busy_ms"] == 0.4 and decoder["top"] == [{"name": "flow_step", "ms": 0.3}]


def test_back_to_back_kernels_of_two_streams_do_not_overlap() -> None:
    trace = {"traceEvents": [_kernel("a", 1, 0, 100), _kernel("b", 2, 100, 100)]}
    got = summarize_trace(trace, seconds=0.001)
    assert got["any_busy_ms"] == 0.2 and got["overlap_ms"] == 0.0
    assert summarize_trace({}, seconds=1.0)["kernels"] == 0


def test_without_cuda_the_profile_is_an_error_entry_and_the_route_answers_it() -> None:
    from bench.gpu_server import build
    from glm4voice_api.config import Settings

    assert "error" in profile_window(0.01)  # this machine has no CUDA device: said, not raised
    app = build(Settings())  # no lifespan: a stand-in runtime with a local (CPU) decoder
    app.state.runtime = SimpleNamespace(settings=None, decoder=SimpleNamespace())
    client = TestClient(app)
    got = client.post("/bench/profile_gpu", json={"seconds": 0.01})
    assert got.status_code == 200 and "error" in got.json()
    assert client.post("/bench/profile_gpu", json={"seconds": 0}).status_code == 400


def test_kinetos_events_read_directly_in_the_trace_form(monkeypatch) -> None:
    """The accessors `_device_trace` reads (no trace export in the model's process), exercised on CPU events."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from glm4voice_api.pipeline import gpu_profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.randn(64, 64) @ torch.randn(64, 64)
    assert gpu_profile._device_trace(prof) == {"traceEvents": []}  # no device work on this machine
    monkeypatch.setattr(gpu_profile, "GPU_CATEGORIES", ("cpu_op",))
    events = gpu_profile._device_trace(prof)["traceEvents"]
    assert any(e["name"] == "aten::mm" for e in events) and all(e["dur"] >= 0 for e in events)
    assert summarize_trace({"traceEvents": events}, 1.0)["kernels"] == len(events)
