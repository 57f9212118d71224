"""One ODE step of the flow estimator with its transformer blocks on a transposed view vs a frame-major copy.

Why: the eager kernel split (bench/results/gpu_decoder_kernels.json) put 38% of a step's GPU time in one strided
elementwise kernel; the transformer blocks run on ``h.transpose(1, 2)`` of the conv activations, so every
LayerNorm, residual add and projection of a block reads strided memory. ``ConditionalDecoder.frame_major`` copies
once per group of blocks instead. This times both (eager and with the blocks compiled as served), splits the
compiled step by kernel kind, and checks the two give the same step (they should be equal: a copy, no new op order).

    python -m bench.layout_probe --device cuda --out /tmp/layout.json
    python -m bench.layout_probe --device cpu --preset tiny --out /tmp/layout.json   # a smoke run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from bench.attention_probe import _time_ms
from bench.bench_speech_decoder import _DTYPES, add_profile_args, build_decoder
from bench.profile_decoder import _step_call, kernel_split

SHAPES = [(1, 0, 10), (16, 100, 26), (16, 100, 80), (32, 100, 80), (32, 100, 104)]
"""(rows, context tokens, new tokens) of one step."""


def time_step(step, device: torch.device, iters: int) -> float:
    """Median ms of one step (CUDA events on a GPU, mean wall time on a CPU)."""
    with torch.inference_mode():
        return _time_ms(step, iters, device.type)


def one_step_output(decoder, rows: int, tokens: int) -> torch.Tensor:
    """The state after one step from a fixed start (both layouts get the same inputs)."""
    gen = torch.Generator(device=decoder.device).manual_seed(0)
    cfm, dev = decoder.flow.decoder, decoder.device
    t, dt = decoder.mel_frames(tokens), decoder.flow.input_embedding.weight.dtype
    x = torch.randn(rows, 80, t, device=dev, generator=gen)
    mask2 = torch.ones(2 * rows, 1, t, device=dev, dtype=dt)
    mu2 = torch.randn(2 * rows, 80, t, device=dev, generator=gen).to(dt)
    spks2 = torch.zeros(2 * rows, 80, device=dev, dtype=dt)
    with torch.inference_mode():
        cfm.step(x, mask2, mu2, spks2, mu2, torch.tensor(0.1, device=dev), torch.tensor(0.1, device=dev), padded=True)
    return x


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_profile_args(p)
    p.add_argument("--modes", default="eager,compiled")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.checkpoint, args.seed = None, 0
    device = torch.device(args.device)
    decoder = build_decoder(args, device, _DTYPES[args.dtype])
    est = decoder.flow.decoder.estimator
    report: dict[str, Any] = {"benchmark": "layout_probe", "preset": args.preset, "dtype": args.dtype}
    report["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report["torch"] = torch.__version__
    shapes = SHAPES if args.preset == "full" else [(1, 0, 10), (4, 20, 16)]

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    for mode in args.modes.split(","):
        if mode == "compiled":
            est.compile_blocks()
        rows_out = []
        for rows, ctx, new in shapes:
            row: dict[str, Any] = {"rows": rows, "context": ctx, "new": new}
            outs = {}
            for frame_major in (False, True):
                est.frame_major = frame_major
                name = "frame_major" if frame_major else "view"
                row[f"{name}_ms"] = time_step(_step_call(decoder, rows, ctx + new, torch.randn), device, args.iters)
                outs[name] = one_step_output(decoder, rows, ctx + new).float()
            row["speedup"] = round(row["view_ms"] / max(row["frame_major_ms"], 1e-9), 3)
            row["max_abs_diff"] = float((outs["view"] - outs["frame_major"]).abs().max())
            print(mode, row, flush=True)
            rows_out.append(row)
            report[mode] = rows_out
            save()
        if mode == "compiled" and device.type == "cuda":
            split = {}
            for frame_major in (False, True):
                est.frame_major = frame_major
                split["frame_major" if frame_major else "view"] = kernel_split(decoder, 32, 100, 80)
            report["compiled_kernel_split_32x180"] = split
            print("split", json.dumps(split), flush=True)
            save()
    est.frame_major = False


if __name__ == "__main__":
    main()
