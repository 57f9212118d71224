"""Every bench module imports (they run only on GPU machines, where a broken import costs device time)."""

import importlib
import pkgutil

import pytest

import bench

MODULES = sorted(m.name for m in pkgutil.iter_modules(bench.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_bench_module_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")


def test_realtime_bench_percentiles_are_milliseconds() -> None:
    from bench.realtime_bench import percentiles

    assert percentiles([0.1, 0.2, 0.3])["p50"] == 200.0
    assert percentiles([])["p99"] is None


def test_profile_kernel_kinds_from_cuda_kernel_names() -> None:
    from bench.profile_decoder import kernel_kind

    names = {
        "fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<bf16>::Params)": "attention",
        "cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x64_4x1x1_kernel0_0": "attention",
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_execute_kernel__5x_cublas": "gemm",
        "nvjet_tst_128x64_64x8_1x1_v_bz_TNT": "gemm",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x64x64": "conv",
        "triton_per_fused_native_layer_norm_0": "fused (triton)",
        "triton_poi_fused_convolution_mish_mul_3": "fused (triton)",
        "void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<float, float>(long, float, ...)": "norm / reduce",
        "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>": "elementwise",
        "cunn_SoftMaxForward<4, float>": "other",
    }
    assert {name: kernel_kind(name) for name in names} == names


def test_attention_probe_flex_over_row_lengths_equals_the_masked_attention() -> None:
    # What a mask-free estimator attention would have to keep: FlexAttention with "key < the row's length" gives
    # the masked SDPA's output on every real query (CPU, fp32, FlexAttention's eager reference).
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from bench.attention_probe import flex_block_mask, max_abs_diff, padded_batch, sdpa_masked

    b = padded_batch(rows=3, frames=96, device="cpu", dtype=torch.float32)
    assert int(b["lengths"].max()) == 96 and torch.equal(b["lengths"][:3], b["lengths"][3:])  # CFG halves alike
    assert not bool(b["valid"].all())  # some rows are padded
    got = flex_block_mask(b, flex_attention, create_block_mask)
    assert max_abs_diff(got, sdpa_masked(b), b["valid"]) < 1e-5


def test_eager_ops_per_pass_by_phase() -> None:
    from bench.decoder_ops import ops_per_phase
    from bench.profile_decoder import requests
    from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
    from tests.conftest import CONFORMANCE

    decoder = load_speech_decoder(CONFORMANCE / "tiny_a" / "speech_decoder")
    encode = decoder.flow.encode
    (row,) = ops_per_phase(decoder, requests, shapes=((1, 0, 10),))
    assert set(row["ops"]) >= {"encode", "ode", "hift"} and all(n > 0 for n in row["ops"].values())
    assert row["ops"]["ode"] % decoder.ode_steps == 0  # the same ops every Euler step
    assert decoder.flow.encode == encode and "encode" not in vars(decoder.flow)  # the probes are taken out


def test_gil_probe_times_a_pass_beside_a_busy_thread_per_switch_interval(tmp_path) -> None:
    import json
    import sys

    from bench import gil_probe

    before = sys.getswitchinterval()
    out = tmp_path / "gil.json"
    gil_probe.main(
        [
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--dtype",
            "fp32",
            "--shapes",
            "1x0x10",
            "--iters",
            "1",
            "--out",
            str(out),
        ]
    )
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(gil_probe.SWITCH_MS) * len(gil_probe.DUTIES)
    assert all(r["1x0x10"] > 0 and r["2000 small ops"] > 0 for r in rows)
    assert all((r["busy_spins_per_s"] > 0) == (r["duty"] > 0) for r in rows)
    assert sys.getswitchinterval() == before  # the probe puts the process's interval back


@pytest.mark.parametrize(
    ("name", "shapes"),
    [
        # HiFT's graphs: the graphs' padded path eagerly, the same values up to frame padding's rounding, and exactly
        # on the bucket's own shape.
        ("check_hift_graphs", ["--frames", "64,70"]),
        # The flow front's graphs: exactly the bucket's own eager run, and today's unpadded front up to token and
        # frame padding's rounding.
        ("check_flow_front_graphs", ["--tokens", "26,40"]),
    ],
)
def test_graph_checks_run_on_the_cpu(tmp_path, name: str, shapes: list[str]) -> None:
    """The GPU checks of the graph runners, smoke-run on the CPU (nothing captured there)."""
    import json

    module = importlib.import_module(f"bench.{name}")
    out = tmp_path / f"{name}.json"
    argv = ["--device", "cpu", "--preset", "tiny", "--rows", "1,3", *shapes, "--iters", "1"]
    report = module.main([*argv, "--out", str(out)])
    assert json.loads(out.read_text()) == report and len(report["shapes"]) == 4 and not report["use_graphs"]
    for row in report["shapes"]:
        assert row["finite"] and row["max_abs_diff_same_shape"] == 0.0 and row["max_abs_diff_unpadded"] < 1e-5
        assert row["captures"] == 0
    if name == "check_flow_front_graphs":
        assert all(row["bucket"][1] % 16 == 0 for row in report["shapes"])


def test_green_probe_plans_sm_splits_and_steps_its_load_on_the_cpu(tmp_path) -> None:
    """The green-context probe's SM plan (rounded to the split granularity, the load never left without SMs) and
    its 9B-shaped load step, scaled down; the GPU runs are bench/results/GPU.md's."""
    import json

    import torch

    from bench import green_probe

    assert green_probe.sm_plan(132, [16, 20, 24, 120, 124, 0]) == [(16, 116), (24, 108), (120, 12)]
    out = tmp_path / "green.json"
    green_probe.main(["--device", "cpu", "--plan-only", "--decoder-sms", "16,32", "--out", str(out)])
    assert json.loads(out.read_text())["plan"] == [[16, 116], [32, 100]]
    load = green_probe.LLMLoad(torch.device("cpu"), batch=2, scale=1 / 64)
    load.step()
    assert len(load.layers) == green_probe.LAYERS and load.x.shape == (2, 64)


def test_green_probe_served_decoder_defaults_are_the_servers() -> None:
    """The probe's copy of the decoder defaults (for GPU machines without pydantic) equals config.py's."""
    from bench import green_probe
    from glm4voice_api.config import Settings

    options = Settings().speech_decoder
    assert green_probe.SERVED == {
        "ode_steps": options.ode_steps,
        "graph_batches": tuple(options.graph_batches),
        "max_batch": options.max_batch,
        "max_prompt_tokens": options.max_prompt_tokens,
    }
    assert green_probe.SERVED_LONGEST_CHUNK == max(options.schedule)
    assert options.compile_blocks and options.cuda_graphs and options.chunking == "fixed"


def test_traffic_probe_steps_its_bf16_and_fp8_loads_on_the_cpu(tmp_path) -> None:
    """The traffic probe's FP8 load (float8 weights, inputs quantized per call, `torch._scaled_mm`) steps, scaled down,
    as its bf16 one does; its served rules are the server's; the GPU runs are bench/results/GPU.md's."""
    import json

    from bench import green_probe, traffic_probe

    out = tmp_path / "traffic.json"
    traffic_probe.main(["--device", "cpu", "--preset", "tiny", "--out", str(out)])
    assert json.loads(out.read_text())["cpu_check"] == "ok"
    assert traffic_probe.SERVED == {"ode_steps": green_probe.SERVED["ode_steps"], "context": 100}
    assert traffic_probe.SERVED["context"] == green_probe.SERVED["max_prompt_tokens"]
