"""How fast the flow estimator's attention could be without its mask: a GPU probe, no product code involved.

Every decoder pass runs as CUDA graphs over padded buckets, so each of the estimator's 64 attention calls gets an
additive mask ([B, 1, 1, T], -inf past a row's length) and SDPA cannot use a flash kernel. By FLOP count attention is
39% of an ODE step at 100 + 80 tokens (bench/results/GPU.md). This times, at the estimator's shapes (both CFG
branches: 2 x rows; 8 heads of 64; bf16):

- `sdpa_masked`: SDPA with the mask, as served (PyTorch's pick), and each backend that accepts a mask (memory-
  efficient, cuDNN) forced, to see what the pick costs;
- `sdpa_flash_nomask`: flash without a mask: wrong for padded rows, the bound of what a mask-free kernel can gain;
- `flex_block_mask`: `torch.compile`d FlexAttention whose mask says "key < the row's length", with its block mask
  (fully padded key blocks skipped) built per call, and the cost of building it alone;

and checks that FlexAttention's output equals the masked SDPA's on every real (unpadded) query (`max_abs_diff`),
which is what a product change would have to keep. If `flex_block_mask` is well below `sdpa_masked`, an estimator
attention over the rows' lengths is worth building; if not, attention is not the lever.

    python -m bench.attention_probe --out /tmp/attention.json            # on the GPU machine (torch only)
    python -m bench.attention_probe --device cpu --rows 2 --frames 64 --out /tmp/a.json   # correctness only
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

HEADS, HEAD_DIM = 8, 64
"""The released estimator's attention (EstimatorConfig.full: 8 heads of 64)."""


def padded_batch(rows: int, frames: int, device: str, dtype: torch.dtype, seed: int = 0) -> dict:
    """q, k, v for 2 x rows sequences (both CFG branches) padded to `frames`, their lengths (60-100% of the bucket,
    as rows of one pass are), and the additive mask the estimator builds from them."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(int(0.6 * frames), frames + 1, (rows,), generator=gen)
    lengths[0] = frames  # the pass's longest row fills its bucket
    lengths = lengths.repeat(2)  # the unconditional branch's rows are as long as the conditional ones
    shape = (2 * rows, HEADS, frames, HEAD_DIM)
    q, k, v = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(3))
    valid = torch.arange(frames)[None, :] < lengths[:, None]  # [B, T]
    bias = torch.zeros(2 * rows, 1, 1, frames).masked_fill(~valid[:, None, None, :], -float("inf"))
    return {
        "q": q,
        "k": k,
        "v": v,
        "lengths": lengths.to(device),
        "valid": valid.to(device),
        "bias": bias.to(device, dtype),
    }


def sdpa_masked(b: dict) -> torch.Tensor:
    return F.scaled_dot_product_attention(b["q"], b["k"], b["v"], attn_mask=b["bias"])


def flex_block_mask(b: dict, flex: Callable, create_block_mask: Callable) -> torch.Tensor:
    lengths = b["lengths"]

    def key_in_row(batch, head, q_idx, kv_idx):  # FlexAttention's mask_mod signature
        return kv_idx < lengths[batch]

    batch, _, frames, _ = b["q"].shape
    mask = create_block_mask(key_in_row, B=batch, H=None, Q_LEN=frames, KV_LEN=frames, device=b["q"].device)
    return flex(b["q"], b["k"], b["v"], block_mask=mask)


def max_abs_diff(got: torch.Tensor, want: torch.Tensor, valid: torch.Tensor) -> float:
    """Largest difference over real queries (a padded query's output is masked out by the estimator anyway)."""
    keep = valid[:, None, :, None].expand_as(want)
    return float((got.float() - want.float()).abs()[keep].max())


def _time_ms(fn: Callable[[], object], iters: int, device: str) -> float:
    for _ in range(3):
        fn()
    if device.startswith("cuda"):
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return round(statistics.median(times), 4)
    import time

    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return round((time.perf_counter() - t0) / iters * 1000, 3)


def probe(rows: int, frames: int, device: str, dtype: torch.dtype, iters: int, compiled: bool) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    b = padded_batch(rows, frames, device, dtype)
    flex = torch.compile(flex_attention, dynamic=False) if compiled else flex_attention
    with torch.inference_mode():
        want = sdpa_masked(b)
        out: dict = {"rows": rows, "frames": frames, "batch": 2 * rows}
        out["ms"] = {"sdpa_masked": _time_ms(lambda: sdpa_masked(b), iters, device)}
        backends = {
            "sdpa_masked_efficient": [SDPBackend.EFFICIENT_ATTENTION],
            "sdpa_masked_cudnn": [SDPBackend.CUDNN_ATTENTION],
        }
        if device.startswith("cuda"):
            backends["sdpa_flash_nomask"] = [SDPBackend.FLASH_ATTENTION]
        for name, backend in backends.items():
            masked = not name.endswith("nomask")
            try:
                with sdpa_kernel(backend):
                    out["ms"][name] = _time_ms(
                        lambda m=masked: F.scaled_dot_product_attention(
                            b["q"], b["k"], b["v"], attn_mask=b["bias"] if m else None
                        ),
                        iters,
                        device,
                    )
            except RuntimeError as exc:  # a backend this GPU, dtype or shape does not support
                out["ms"][name] = f"unavailable: {str(exc)[:80]}"
        # FlexAttention last and guarded: a compile failure leaves the SDPA figures above intact.
        for make_mask, how in ((torch.compile(create_block_mask), "compiled"), (create_block_mask, "eager")):
            if how == "compiled" and not compiled:
                continue
            try:
                got = flex_block_mask(b, flex, make_mask)
                out["max_abs_diff"] = max_abs_diff(got, want, b["valid"])
                out["ms"]["flex_block_mask"] = _time_ms(
                    lambda mm=make_mask: flex_block_mask(b, flex, mm), iters, device
                )
                out["ms"]["flex_mask_build_only"] = _time_ms(
                    lambda mm=make_mask: mm(
                        lambda bb, h, qi, kv: kv < b["lengths"][bb], 2 * rows, None, frames, frames, device=device
                    ),
                    iters,
                    device,
                )
                out["mask_build"] = how
                break
            except Exception as exc:  # noqa: BLE001 - recorded; the eager mask build is tried next
                out[f"flex_error_{how}"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32])
    p.add_argument("--frames", type=lambda s: [int(x) for x in s.split(",")], default=[256, 1280, 1792])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    compiled = args.device.startswith("cuda")  # flex compiles for CUDA; on a CPU it runs its eager reference
    report = {
        "benchmark": "attention_probe",
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name() if compiled else "cpu",
        "dtype": args.dtype,
        "heads": HEADS,
        "head_dim": HEAD_DIM,
        "results": [],
    }
    for rows in args.rows:
        for frames in args.frames:
            try:
                row = probe(rows, frames, args.device, getattr(torch, args.dtype), args.iters, compiled)
            except Exception as exc:  # noqa: BLE001 - one shape's failure must not cost the others
                row = {"rows": rows, "frames": frames, "error": f"{type(exc).__name__}: {exc}"[:300]}
            report["results"].append(row)
            print("attention", json.dumps(row), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
