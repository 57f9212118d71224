"""Speech tokenizer precision: token agreement of float16 / bfloat16 / TF32 against float32, and their speed.

Full-size random weights (the released geometry, built on the device), with the codebook calibrated to the
encoder's own output cloud (`calibrate_codebook`) so that tokens vary with the input and near ties occur as they
would for a trained model's; the codebook stays float32 in every variant, as the loader keeps it. Inputs: the
benchmark's spoken question (`bench/data/question_en.flac`) and synthetic signals not used for calibration. For each
variant: the fraction of tokens equal to float32's, the VQ margin (2nd - 1st squared distance, float32) of the
tokens that flipped, and one call's time at batch 1 and 32 (3 s clips, CUDA-synchronised, median).

    python -m bench.tokenizer_precision --device cuda --out /tmp/tok_precision.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.bench_speech_tokenizer import build_tokenizer
from glm4voice_api.audio.decode import decode_audio
from glm4voice_api.models.speech_tokenizer.frontend import SAMPLE_RATE
from glm4voice_api.models.speech_tokenizer.tokenizer import SpeechTokenizer
from glm4voice_api.random_checkpoints.speech_tokenizer import calibrate_codebook, calibration_audio

QUESTION = Path(__file__).parent / "data" / "question_en.flac"
VARIANTS = ("float32", "tf32", "float16", "bfloat16")


def variant(base: SpeechTokenizer, name: str) -> SpeechTokenizer:
    """A copy of `base` (float32) in one precision; the codebook stays float32 (the loader's rule)."""
    if name in ("float32", "tf32"):
        return base
    model = copy.deepcopy(base.model).to(getattr(torch, name))
    model.codebook.float()
    return SpeechTokenizer(model, base.feature_extractor)


def tokens_and_margins(tokenizer: SpeechTokenizer, audio: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of every input (concatenated) and, for float32, each token's VQ margin."""
    ids, margins = [], []
    with torch.inference_mode():
        for wave in audio:
            features, frame_mask = tokenizer.log_mel([wave])
            out = tokenizer.model(features.to(tokenizer.dtype), frame_mask)
            x = out.pre_vq[out.token_mask].float()
            book = tokenizer.model.codebook.weight.float()
            dist = book.pow(2).sum(1) + x.pow(2).sum(1, keepdim=True) - 2 * x @ book.t()
            two = dist.topk(2, dim=1, largest=False).values
            ids.append(out.token_ids[out.token_mask].cpu().numpy())
            margins.append((two[:, 1] - two[:, 0]).cpu().numpy())
    return np.concatenate(ids), np.concatenate(margins)


def timed(tokenizer: SpeechTokenizer, items: list, iters: int) -> float:
    """Median seconds of one `tokenize_batch` call (what the serving worker runs; its ids come back to the host)."""
    tokenizer.tokenize_batch(items)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        tokenizer.tokenize_batch(items)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="full")
    parser.add_argument("--signals", type=int, default=8, help="synthetic inputs beside the question")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    base = build_tokenizer(args.preset, device, torch.float32)
    calibrate_codebook(base, calibration_audio(seed=0), torch.Generator(device=device).manual_seed(1))
    question = decode_audio(QUESTION.read_bytes(), max_bytes=1 << 24, max_seconds=60.0)
    audio = [question.astype(np.float32), *calibration_audio(seed=7, n=args.signals, seconds=6.0)]
    clips = [(w[: 3 * SAMPLE_RATE], SAMPLE_RATE) for w in calibration_audio(seed=9, n=32, seconds=3.0)]

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref, margins = tokens_and_margins(base, audio)
    report: dict[str, Any] = {"device_name": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device), "preset": args.preset,
                              "tokens": int(ref.size), "inputs": len(audio), "variants": {}}  # fmt: skip
    for name in VARIANTS:
        tf32 = name == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        tok = variant(base, name)
        ids, _ = tokens_and_margins(tok, audio)
        flipped = ids != ref
        row = {
            "agreement": round(float(1 - flipped.mean()), 5),
            "flipped": int(flipped.sum()),
            "flipped_margins_max": round(float(margins[flipped].max()), 4) if flipped.any() else None,
            "tokens_with_margin_below_it": int((margins < margins[flipped].max()).sum()) if flipped.any() else 0,
            "ms_batch1": round(timed(tok, clips[:1], args.iters) * 1000, 2),
            "ms_batch32": round(timed(tok, clips, args.iters) * 1000, 2),
        }
        report["variants"][name] = row
        print(name, json.dumps(row), flush=True)
        if tok is not base:
            del tok
            if device.type == "cuda":
                torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    report["margin_quantiles"] = {q: round(float(np.quantile(margins, q)), 4) for q in (0.001, 0.01, 0.1, 0.5)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
