"""The flow's front as CUDA graphs (`GraphedFlowFront`) against today's eager front (`FlowModel.front`): values,
time, captures, memory.

Full-size flow with random weights (bf16 as served on CUDA). Per pass shape (rows x tokens: the first row that long,
the others up to 20 tokens shorter, as a decoder pass's rows of different contexts and chunks):

- max_abs_diff_same_shape: graph replay vs the same runner's buffers run eagerly (`use_graphs=False`) on the same
  bucket (the capture itself: 0 if the graph replays the eager kernels; a difference is a capture problem or a
  nondeterministic kernel);
- max_abs_diff_unpadded: graph replay vs today's eager front (`FlowModel.front` without the runner, unpadded rows and
  tokens, frames unpadded): mu, mask and spks over each row's valid frames (token and frame padding change the
  GEMMs', softmax's and convolutions' shapes: float rounding, ~1e-6 in fp32, bf16 rounding in bf16);
- eager_ms vs graph_ms: one front each (host side included: index tables, copies; for the graph the fill, replay and
  copy-out), median of `--iters` after a warm-up, synchronised before and after each;
- captures, capture_s, peak_gib (peak allocated during the shape's capture and passes).

`--warmup-all` also captures every bucket up to (32 rows, 256 tokens) as the server's warm-up would (100 context
tokens + a 156-token chunk) and reports how many graphs, how long and how much memory that takes.

    python -m bench.check_flow_front_graphs --out /tmp/flow_front_graphs.json                 # on a GPU
    python -m bench.check_flow_front_graphs --device cpu --preset tiny --rows 1,3 --tokens 26,40 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glm4voice_api.models.speech_decoder.flow import FlowConfig, FlowModel, mel_length
from glm4voice_api.models.speech_decoder.flow_front_graphs import FlowFrontGraphConfig, GraphedFlowFront
from glm4voice_api.models.speech_decoder.loader import load_flow
from glm4voice_api.random_checkpoints.speech_decoder import init_random_flow_state_dict

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_PRESETS = {"tiny": FlowConfig.tiny, "full": FlowConfig.full}
Front = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pass_inputs(flow: FlowModel, rows: int, tokens: int, seed: int) -> tuple[np.ndarray, list[int], list]:
    """Right-padded host tokens [rows, tokens], row lengths, speaker embeddings (None, as GLM-4-Voice passes)."""
    rng = np.random.default_rng(seed)
    lengths = [tokens] + [max(1, tokens - int(rng.integers(1, 21))) for _ in range(rows - 1)]
    host = np.zeros((rows, tokens), dtype=np.int64)
    for b, n in enumerate(lengths):
        host[b, :n] = rng.integers(0, flow.cfg.vocab_size, n)
    return host, lengths, [None] * rows


def _max_diff(a: Front, b: Front) -> float:
    """Over each row's valid frames (mu, mask) and spks."""
    out = (a[2].float() - b[2].float()).abs().max().item()
    for r, n in enumerate(a[3]):
        out = max(out, (a[0][r, :, :n].float() - b[0][r, :, :n].float()).abs().max().item())
        out = max(out, (a[1][r, :, :n].float() - b[1][r, :, :n].float()).abs().max().item())
    return out


def _median_ms(fn: Any, device: torch.device, iters: int) -> float:
    fn()  # warm-up (allocator, algorithms)
    times = []
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 3)


@torch.inference_mode()
def check_shape(
    flow: FlowModel, runner: GraphedFlowFront, same: GraphedFlowFront, rows: int, tokens: int, iters: int, seed: int
) -> dict[str, Any]:
    device = flow.input_embedding.weight.device
    host, lengths, embs = _pass_inputs(flow, rows, tokens, seed)
    feat_lens = [mel_length(n, flow.cfg) for n in lengths]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    captures, capture_s = runner.captures, runner.capture_seconds

    def graph() -> Front:
        flow.graphed_front = runner
        try:
            return flow.front(host, lengths, embs)
        finally:
            flow.graphed_front = None

    def eager() -> Front:
        return flow.front(host, lengths, embs)  # today's front: no runner set

    got = graph()
    captures, capture_s = runner.captures - captures, runner.capture_seconds - capture_s
    same_shape = (*same(host, lengths, feat_lens, embs), feat_lens)
    want = eager()
    eager_ms = _median_ms(eager, device, iters)
    graph_ms = _median_ms(graph, device, iters)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    row = {
        "rows": rows,
        "tokens": tokens,
        "bucket": list(runner.bucket(rows, tokens) or ()),
        "lengths": lengths,
        "max_abs_diff_same_shape": _max_diff(got, same_shape),
        "max_abs_diff_unpadded": _max_diff(got, want),
        "eager_ms": eager_ms,
        "graph_ms": graph_ms,
        "speedup": round(eager_ms / graph_ms, 2) if graph_ms else None,
        "captures": captures,
        "capture_s": round(capture_s, 3),
        "peak_gib": None if peak is None else round(peak, 3),
        "finite": bool(all(torch.isfinite(t).all() for t in got[:3])),
    }
    print(json.dumps({k: v for k, v in row.items() if k != "lengths"}), flush=True)
    return row


def warmup_all(runner: GraphedFlowFront, max_batch: int, max_tokens: int) -> dict[str, Any]:
    device = runner.flow.input_embedding.weight.device
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    captures, seconds = runner.captures, runner.capture_seconds
    start = time.perf_counter()
    graphs = runner.warmup(max_batch, max_tokens)
    after = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    return {
        "max_batch": max_batch,
        "max_tokens": max_tokens,
        "graphs": graphs,
        "captured_now": runner.captures - captures,
        "capture_s": round(runner.capture_seconds - seconds, 2),
        "wall_s": round(time.perf_counter() - start, 2),
        "allocated_gib_added": round((after - before) / 2**30, 3),
        "reserved_gib": round(torch.cuda.memory_reserved(device) / 2**30, 3) if device.type == "cuda" else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="full", choices=sorted(_PRESETS))
    p.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES))
    p.add_argument("--rows", default="1,8,32")
    p.add_argument("--tokens", default="26,126,256")
    p.add_argument("--token-bucket", type=int, default=FlowFrontGraphConfig.token_bucket)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-all", action="store_true", help="also capture every bucket up to 32 rows x 256 tokens")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = _PRESETS[args.preset]()
    dtype = _DTYPES[args.dtype] if device.type == "cuda" else torch.float32  # bf16 is slow on a CPU
    flow = load_flow(init_random_flow_state_dict(cfg, torch.Generator().manual_seed(args.seed)), cfg, device, dtype)
    cuda = device.type == "cuda"
    flow.enable_graphs(use_graphs=cuda)  # the ODE's buckets (nothing captured: the ODE does not run here)
    config = replace(FlowFrontGraphConfig(), token_bucket=args.token_bucket)
    # CPU: the graphs' padded static-buffer path, eagerly (nothing to capture there).
    runner = GraphedFlowFront(flow, config, use_graphs=cuda)
    same = GraphedFlowFront(flow, config, use_graphs=False)
    rows = [int(r) for r in args.rows.split(",")]
    tokens = [int(t) for t in args.tokens.split(",")]
    runner.reserve(max(rows), max(tokens))  # one arena for every shape (as `warmup` reserves it)
    report: dict[str, Any] = {
        "benchmark": "check_flow_front_graphs",
        "preset": args.preset,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "use_graphs": runner.use_graphs,
        "token_bucket": args.token_bucket,
        "shapes": [],
    }

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    for r in rows:
        for t in tokens:
            report["shapes"].append(check_shape(flow, runner, same, r, t, args.iters, args.seed))
            save()
    if args.warmup_all:
        report["warmup_all"] = warmup_all(runner, 32, 256)
        print(json.dumps(report["warmup_all"]), flush=True)
    report["captures"], report["capture_s"] = runner.captures, round(runner.capture_seconds, 2)
    save()
    return report


if __name__ == "__main__":
    main()
