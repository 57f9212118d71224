"""HiFT as CUDA graphs (`GraphedHiFT`) against the eager padded pass (`vocode_padded`): values, time, captures, memory.

Full-size HiFT with random weights (bf16 as served on CUDA). Per pass shape (rows x frames, rows of ragged lengths
with 256-sample caches on most rows, as a decoder pass has):

- max_abs_diff_same_shape: graph replay vs `vocode_padded` on the same bucket-padded batch (the capture itself: 0
  if the graph replays the eager kernels; a difference is a capture problem or a nondeterministic kernel);
- max_abs_diff_unpadded: graph replay vs `vocode_padded` on the unpadded mel, what the decoder ran before (frame and
  row padding change the convolutions' shapes, so float rounding: expect ~1e-7 in fp32, bf16 rounding in bf16);
- eager_ms vs graph_ms: one pass each (draws, fill, replay, copy-out for the graph), median of `--iters` after a
  warm-up, synchronised before and after each pass;
- captures, capture_s, peak_gib (peak allocated during the shape's capture and passes).

`--warmup-all` also captures every bucket up to (32 rows, 1088 frames) as the server's warm-up would and reports
how many graphs, how long and how much memory that takes.

    python -m bench.check_hift_graphs --out /tmp/hift_graphs.json                      # on a GPU
    python -m bench.check_hift_graphs --device cpu --preset tiny --rows 1,3 --frames 64,100 --out /tmp/x.json
"""

from __future__ import annotations

import argparse
from typing import Any

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
from glm4voice_api.models.speech_decoder.hift import HiFTConfig, HiFTGenerator
from glm4voice_api.models.speech_decoder.hift_graphs import GraphedHiFT, HiFTGraphConfig
from glm4voice_api.models.speech_decoder.hift_ragged import vocode_padded
from glm4voice_api.models.speech_decoder.loader import load_hift
from glm4voice_api.random_checkpoints.speech_decoder import init_random_hift_state_dict

_PRESETS = {"tiny": HiFTConfig.tiny, "full": HiFTConfig.full}


def _pass_inputs(
    hift: HiFTGenerator, rows: int, frames: int, device: torch.device, seed: int
) -> tuple[torch.Tensor, list[int], list[torch.Tensor | None]]:
    """A padded mel [rows, 80, frames] whose first row is `frames` long and the others a few to ~50 frames shorter,
    and 256-sample caches on every row but each third (a stream's first chunk has none)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [frames] + [
        max(1, frames - int(torch.randint(1, min(50, frames) + 1, (1,), generator=g))) for _ in range(rows - 1)
    ]
    mel = torch.zeros(rows, hift.cfg.in_channels, frames)
    for b, n in enumerate(lengths):
        mel[b, :, :n] = torch.randn(hift.cfg.in_channels, n, generator=g) - 5
    caches = [None if b % 3 == 0 else (torch.rand(1, 256, generator=g) - 0.5).to(device) for b in range(rows)]
    return mel.to(device), lengths, caches


def _gens(device: torch.device, rows: int, seed: int) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(seed + b) for b in range(rows)]


def _max_diff(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor], samples: list[int]) -> float:
    out = 0.0
    for r, n in enumerate(samples):
        out = max(out, (a[0][r, :n].float() - b[0][r, :n].float()).abs().max().item())
        out = max(out, (a[1][r, :, :n].float() - b[1][r, :, :n].float()).abs().max().item())
    return out


@torch.inference_mode()
def check_shape(
    hift: HiFTGenerator, runner: GraphedHiFT, rows: int, frames: int, iters: int, seed: int = 0
) -> dict[str, Any]:
    device = hift.conv_pre.weight.device
    mel, lengths, caches = _pass_inputs(hift, rows, frames, device, seed)
    samples = [t * hift.upsample_factor for t in lengths]
    graph, captures, capture_s = first_pass(
        runner, device, lambda: runner(mel, lengths, caches, _gens(device, rows, seed))
    )
    eager = vocode_padded(hift, mel, lengths, caches, [None] * rows, _gens(device, rows, seed))
    # The bucket's shape: rows padded with one-frame zero rows, frames with zeros (its rows never mix).
    batch, padded_frames = runner.bucket(rows, frames)
    padded = torch.nn.functional.pad(mel, (0, padded_frames - frames, 0, 0, 0, batch - rows))
    pad_rows = batch - rows
    same = vocode_padded(
        hift, padded, lengths + [1] * pad_rows, caches + [None] * pad_rows, [None] * batch, _gens(device, batch, seed)
    )
    eager_ms = median_ms(
        lambda: vocode_padded(hift, mel, lengths, caches, [None] * rows, _gens(device, rows, seed)), device, iters
    )
    graph_ms = median_ms(lambda: runner(mel, lengths, caches, _gens(device, rows, seed)), device, iters)
    row = {
        "rows": rows,
        "frames": frames,
        "bucket": list(runner.bucket(rows, frames)),
        "lengths": lengths,
        "max_abs_diff_same_shape": _max_diff(graph, same, samples),
        "max_abs_diff_unpadded": _max_diff(graph, eager, samples),
        "finite": bool(torch.isfinite(graph[0]).all() and torch.isfinite(graph[1]).all()),
    }
    return finish_row(row, device, eager_ms, graph_ms, captures, capture_s)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(p, _PRESETS)
    p.add_argument("--frames", default="64,256,1088")
    p.add_argument("--frame-bucket", type=int, default=HiFTGraphConfig.frame_bucket)
    p.add_argument("--warmup-all", action="store_true", help="also capture every bucket up to 32 rows x 1088 frames")
    p.add_argument(
        "--max-rows-frames",
        type=int,
        default=1 << 30,
        help="graph only buckets up to this many rows x frames (default: all; the server's cap is 4096)",
    )
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = _PRESETS[args.preset]()
    dtype = model_dtype(args, device)
    hift = load_hift(init_random_hift_state_dict(cfg, torch.Generator().manual_seed(args.seed)), cfg, device, dtype)
    # CPU: the graphs' padded static-buffer path, eagerly (nothing to capture there).
    # Every shape captured, past the serving cap too (`max_rows_frames`): this measures where graphs pay.
    config = HiFTGraphConfig(frame_bucket=args.frame_bucket, max_rows_frames=args.max_rows_frames)
    runner = GraphedHiFT(hift, config, use_graphs=device.type == "cuda")
    rows, frames = ints(args.rows), ints(args.frames)
    runner.reserve(max(rows), max(frames))  # one arena for every shape (as `warmup` reserves it)
    report = report_head("check_hift_graphs", args, dtype, device)
    report.update(use_graphs=runner.use_graphs, frame_bucket=args.frame_bucket)
    shapes = [lambda r=r, f=f: check_shape(hift, runner, r, f, args.iters, args.seed) for r in rows for f in frames]
    warmup = (lambda: warmup_all(runner, device, 32, "max_frames", 1088)) if args.warmup_all else None
    return run_report(report, args.out, shapes, runner, warmup)


if __name__ == "__main__":
    main()
