"""Speech tokenizer throughput, in seconds of audio tokenized per wall-clock second.

Random weights of a preset are built directly on the device (no files), so `--preset full` measures the released
geometry without the 1.46 GB checkpoint. Timed: one `SpeechTokenizer.tokenize_batch` call per iteration, i.e. log-mel
+ encoder + VQ + copying the ids back to the host, exactly what the serving worker runs.

Run from the repository root:
    python -m bench.bench_speech_tokenizer --preset tiny --device cpu --out /tmp/tok_tiny.json
    python -m bench.bench_speech_tokenizer --preset full --device cuda --dtype bfloat16 --out /tmp/tok_full.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import WhisperFeatureExtractor

from glm4voice_api.models.speech_tokenizer.encoder import WhisperVQConfig, WhisperVQEncoder
from glm4voice_api.models.speech_tokenizer.frontend import SAMPLE_RATE
from glm4voice_api.models.speech_tokenizer.tokenizer import SpeechTokenizer
from glm4voice_api.random_checkpoints.speech_tokenizer import (
    calibration_audio,
    init_random_weights,
    released_preprocessor_config,
)

_PRESETS = {"tiny": WhisperVQConfig.tiny, "full": WhisperVQConfig.full}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_tokenizer(preset: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> SpeechTokenizer:
    """Random-weight tokenizer of a preset, materialised straight on `device`."""
    with torch.device("meta"):
        model = WhisperVQEncoder(_PRESETS[preset]())
    model.to_empty(device=device)
    init_random_weights(model, torch.Generator(device=device).manual_seed(seed))
    model.to(dtype).requires_grad_(requires_grad=False)
    return SpeechTokenizer(model, WhisperFeatureExtractor.from_dict(released_preprocessor_config()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_batch(tokenizer: SpeechTokenizer, items: list, *, warmup: int, iters: int) -> dict[str, Any]:
    """Time `tokenize_batch(items)`; the returned ids are host lists, so the timing includes device sync."""
    device = tokenizer.device
    for _ in range(warmup):
        tokenizer.tokenize_batch(items)
    times, n_tokens = [], 0
    for _ in range(iters):
        _sync(device)
        start = time.perf_counter()
        tokens = tokenizer.tokenize_batch(items)
        times.append(time.perf_counter() - start)
        n_tokens = sum(len(t) for t in tokens)
    # The log-mel alone, to show how much of a call is the (torch STFT) front end.
    _sync(device)
    start = time.perf_counter()
    tokenizer.log_mel([w for w, _ in items])
    _sync(device)
    log_mel_s = time.perf_counter() - start
    audio_s = sum(w.size for w, _ in items) / SAMPLE_RATE
    mean_s = statistics.mean(times)
    return {
        "batch_size": len(items),
        "audio_seconds": audio_s,
        "iters": iters,
        "mean_s": mean_s,
        "min_s": min(times),
        "audio_seconds_per_second": audio_s / mean_s,
        "tokens_per_call": n_tokens,
        "log_mel_s": log_mel_s,
    }


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run every batch size, write one JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(_PRESETS), default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated utterances per call")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each utterance (30 s = one window)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON report")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    tokenizer = build_tokenizer(args.preset, device, _DTYPES[args.dtype])
    audio = calibration_audio(seed=1, n=max(batch_sizes), seconds=args.seconds)

    results = []
    for batch_size in batch_sizes:
        items = [(w, SAMPLE_RATE) for w in audio[:batch_size]]
        row = bench_batch(tokenizer, items, warmup=args.warmup, iters=args.iters)
        results.append(row)
        print(
            f"batch {batch_size:3d}: {row['audio_seconds_per_second']:9.1f} s audio/s "
            f"({row['mean_s'] * 1000:.1f} ms per call, log-mel {row['log_mel_s'] * 1000:.1f} ms)"
        )
    on_gpu = device.type == "cuda"
    report = {
        "benchmark": "speech_tokenizer",
        "preset": args.preset,
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or platform.machine(),
        "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seconds_per_item": args.seconds,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
