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
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from bench.graph_checks import (
    add_common_args,
    finish_row,
    first_pass,
    ints,
    median_ms,
    model_dtype,
    report_head,
    run_report,
    warmup_all,
)
from glm4voice_api.models.speech_decoder.flow import FlowConfig, FlowModel, mel_length
from glm4voice_api.models.speech_decoder.flow_front_graphs import FlowFrontGraphConfig, GraphedFlowFront
from glm4voice_api.models.speech_decoder.loader import load_flow
from glm4voice_api.random_checkpoints.speech_decoder import init_random_flow_state_dict

_PRESETS = {"tiny": FlowConfig.tiny, "full": FlowConfig.full}
Front = tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]


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


@torch.inference_mode()
def check_shape(
    flow: FlowModel, runner: GraphedFlowFront, same: GraphedFlowFront, rows: int, tokens: int, iters: int, seed: int
) -> dict[str, Any]:
    device = flow.input_embedding.weight.device
    host, lengths, embs = _pass_inputs(flow, rows, tokens, seed)
    feat_lens = [mel_length(n, flow.cfg) for n in lengths]

    def graph() -> Front:
        flow.graphed_front = runner
        try:
            return flow.front(host, lengths, embs)
        finally:
            flow.graphed_front = None

    def eager() -> Front:
        return flow.front(host, lengths, embs)  # today's front: no runner set

    got, captures, capture_s = first_pass(runner, device, graph)
    same_shape = (*same(host, lengths, feat_lens, embs), feat_lens)
    want = eager()
    eager_ms = median_ms(eager, device, iters)
    graph_ms = median_ms(graph, device, iters)
    row = {
        "rows": rows,
        "tokens": tokens,
        "bucket": list(runner.bucket(rows, tokens) or ()),
        "lengths": lengths,
        "max_abs_diff_same_shape": _max_diff(got, same_shape),
        "max_abs_diff_unpadded": _max_diff(got, want),
        "finite": bool(all(torch.isfinite(t).all() for t in got[:3])),
    }
    return finish_row(row, device, eager_ms, graph_ms, captures, capture_s)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p, _PRESETS)
    p.add_argument("--tokens", default="26,126,256")
    p.add_argument("--token-bucket", type=int, default=FlowFrontGraphConfig.token_bucket)
    p.add_argument("--warmup-all", action="store_true", help="also capture every bucket up to 32 rows x 256 tokens")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = _PRESETS[args.preset]()
    dtype = model_dtype(args, device)
    flow = load_flow(init_random_flow_state_dict(cfg, torch.Generator().manual_seed(args.seed)), cfg, device, dtype)
    cuda = device.type == "cuda"
    flow.enable_graphs(use_graphs=cuda)  # the ODE's buckets (nothing captured: the ODE does not run here)
    config = replace(FlowFrontGraphConfig(), token_bucket=args.token_bucket)
    # CPU: the graphs' padded static-buffer path, eagerly (nothing to capture there).
    runner = GraphedFlowFront(flow, config, use_graphs=cuda)
    same = GraphedFlowFront(flow, config, use_graphs=False)
    rows, tokens = ints(args.rows), ints(args.tokens)
    runner.reserve(max(rows), max(tokens))  # one arena for every shape (as `warmup` reserves it)
    report = report_head("check_flow_front_graphs", args, dtype, device)
    report.update(use_graphs=runner.use_graphs, token_bucket=args.token_bucket)
    shapes = [
        lambda r=r, t=t: check_shape(flow, runner, same, r, t, args.iters, args.seed) for r in rows for t in tokens
    ]
    warmup = (lambda: warmup_all(runner, device, 32, "max_tokens", 256)) if args.warmup_all else None
    return run_report(report, args.out, shapes, runner, warmup)


if __name__ == "__main__":
    main()
