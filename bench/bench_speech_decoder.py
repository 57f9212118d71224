"""Speech decoder (flow + HiFT) real-time factor for 1 and N concurrent streams.

N streams each decode one response of ``--tokens`` speech tokens with a chunk schedule (default PR #116's
10, 20, 40, 40, ...; the last size repeats). Every scheduling step submits the next chunk of all N streams as
ONE ``SpeechDecoder.decode_batch`` call, which is what a batching server does. Prompts follow the reference
(all earlier tokens + all earlier returned mels), so later chunks cost more. Timed: the whole call, including
copying the audio back to the host.

- ``rtf`` = wall time / audio seconds of ONE stream (< 1: every stream is decoded faster than real time);
- ``x_realtime`` = N * audio seconds / wall time (aggregate throughput);
- ``first_chunk_s`` = latency of the first chunk step; ``max_stall_ratio`` = max over steps k > 0 of
  wall(k) / audio returned by step k-1 (> 1: playback would stall waiting for chunk k);
- ``hift_only``: the vocoder alone on [N, 80, T] mels of one 40-token chunk.

Weights are random and built straight from the presets (``--preset full`` = released sizes, no files) unless
``--checkpoint DIR`` names a real decoder folder. Run from the repository root:
    python -m bench.bench_speech_decoder --preset tiny --device cpu --out /tmp/dec_tiny.json
    python -m bench.bench_speech_decoder --preset full --device cuda --dtype bf16 --out /tmp/dec_full.json
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

from glm4voice_api.models.speech_decoder.chunks import ChunkRequest, ChunkResult
from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.models.speech_decoder.flow import FlowConfig
from glm4voice_api.models.speech_decoder.hift import HiFTConfig
from glm4voice_api.models.speech_decoder.loader import load_flow, load_hift, load_speech_decoder
from glm4voice_api.random_checkpoints.speech_decoder import init_random_flow_state_dict, init_random_hift_state_dict

_PRESETS = {"tiny": (FlowConfig.tiny, HiFTConfig.tiny), "full": (FlowConfig.full, HiFTConfig.full)}
_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


def build_decoder(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> SpeechDecoder:
    if args.checkpoint:
        return load_speech_decoder(args.checkpoint, device, dtype)
    flow_cfg, hift_cfg = (make() for make in _PRESETS[args.preset])
    gen = torch.Generator().manual_seed(args.seed)
    flow = load_flow(init_random_flow_state_dict(flow_cfg, gen), flow_cfg, device, dtype)
    hift = load_hift(init_random_hift_state_dict(hift_cfg, gen), hift_cfg, device, dtype)
    return SpeechDecoder(flow, hift)


def add_profile_args(p: argparse.ArgumentParser) -> None:
    """The flags the decoder profiles share (profile_decoder.py, gil_probe.py): full size, bf16, on the GPU."""
    p.add_argument("--preset", default="full")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=sorted(_DTYPES))
    p.add_argument("--iters", type=int, default=5)


def chunk_sizes(schedule: list[int], total: int) -> list[int]:
    """Split ``total`` tokens by the schedule (last size repeats); a remainder under the first size is merged."""
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(schedule[min(len(sizes), len(schedule) - 1)], total - sum(sizes)))
    if len(sizes) > 1 and sizes[-1] < schedule[0]:
        sizes[-2] += sizes.pop()
    return sizes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    # Draw on the decoder's device: a CPU generator would add a host randn + copy per chunk on CUDA.
    return torch.Generator(device=device).manual_seed(seed)


def run_streams(decoder: SpeechDecoder, n_streams: int, sizes: list[int], seed: int, ragged: int = 1) -> dict[str, Any]:
    """Decode ``n_streams`` synthetic responses chunk by chunk, all streams batched per step.

    ``ragged`` > 1: stream i's chunks are ``i % ragged`` tokens longer, so the rows of one pass differ in length
    as they do in a server (streams at different points of their replies).
    """
    device = decoder.device
    vocab = decoder.flow.cfg.vocab_size
    tok_gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (n_streams, sum(sizes) + len(sizes) * ragged), generator=tok_gen).tolist()
    n_mels = decoder.flow.cfg.output_size
    state: list[ChunkResult | None] = [None] * n_streams
    prompt_mels = [torch.zeros(n_mels, 0, device=device) for _ in range(n_streams)]
    steps, audio = [], [0] * n_streams
    starts = [0] * n_streams
    start = 0
    for k, size in enumerate(sizes):
        requests = []
        for i in range(n_streams):
            prev = state[i]
            n = size + i % ragged
            requests.append(
                ChunkRequest(
                    tokens=tokens[i][starts[i] : starts[i] + n],
                    prompt_tokens=tokens[i][: starts[i]],
                    prompt_mel=prompt_mels[i],
                    final=k == len(sizes) - 1,
                    overlap_tail=prev.overlap_tail if prev else None,
                    cache_mel=prev.cache_mel if prev else None,
                    cache_source=prev.cache_source if prev else None,
                    generator=_generator(device, seed + i),
                )
            )
        _sync(device)
        t0 = time.perf_counter()
        results = decoder.decode_batch(requests)
        _sync(device)
        wall = time.perf_counter() - t0
        for i, res in enumerate(results):
            state[i] = res
            prompt_mels[i] = torch.cat([prompt_mels[i], res.mel], dim=1)
            audio[i] += res.speech.shape[0]
            starts[i] += size + i % ragged
        chunk_audio_s = results[0].speech.shape[0] / decoder.sample_rate
        steps.append({"chunk_tokens": size, "prompt_tokens": start, "wall_s": wall, "audio_s": chunk_audio_s})
        start += size
    wall_total = sum(s["wall_s"] for s in steps)
    audio_s = audio[0] / decoder.sample_rate
    stalls = [steps[k]["wall_s"] / steps[k - 1]["audio_s"] for k in range(1, len(steps))]
    return {
        "streams": n_streams,
        "chunks": sizes,
        "audio_s_per_stream": audio_s,
        "wall_s": wall_total,
        "rtf": wall_total / audio_s,
        "x_realtime": n_streams * audio_s / wall_total,
        "first_chunk_s": steps[0]["wall_s"],
        "max_stall_ratio": max(stalls) if stalls else 0.0,
        "steps": steps,
    }


def count_syncs(decoder: SpeechDecoder, sizes: list[int], seed: int, ragged: int) -> float:
    """Host synchronisations per `decode_batch` call (torch's sync debug mode warns once per sync).

    Each one empties the GPU queue; beside vLLM in another process that hands the GPU away for a time slice.
    The floor is 1: the new audio of all rows comes back to the host once per pass.
    """
    import warnings

    calls = 0
    original = decoder.decode_batch

    def counted(requests: list[ChunkRequest]) -> list[ChunkResult]:
        nonlocal calls
        calls += 1
        return original(requests)

    decoder.decode_batch = counted  # type: ignore[method-assign]
    timing_sync = globals()["_sync"]
    globals()["_sync"] = lambda device: None  # the timing's own synchronize() calls are not the decoder's
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run_streams(decoder, 4, sizes, seed, ragged)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        del decoder.decode_batch
        globals()["_sync"] = timing_sync
    return sum("synchroniz" in str(w.message) for w in caught) / max(calls, 1)


def run_hift_only(decoder: SpeechDecoder, n_streams: int, frames: int, iters: int, seed: int) -> dict[str, Any]:
    """HiFT alone on a batch of random mels of ``frames`` frames (one streaming chunk)."""
    device = decoder.device
    mel = torch.randn(n_streams, decoder.flow.cfg.output_size, frames, generator=torch.Generator().manual_seed(seed))
    mel = (mel * 2 - 6).to(device)  # roughly log-mel range
    times = []
    for it in range(iters + 1):  # the first call is a warm-up
        gens = [_generator(device, seed + i) for i in range(n_streams)]
        _sync(device)
        t0 = time.perf_counter()
        wav, _ = decoder.hift.inference(mel, generator=gens)
        wav.cpu()
        _sync(device)
        if it:
            times.append(time.perf_counter() - t0)
    audio_s = frames * decoder.hop_length / decoder.sample_rate
    mean = statistics.mean(times)
    return {
        "streams": n_streams,
        "frames": frames,
        "mean_s": mean,
        "rtf": mean / audio_s,
        "x_realtime": n_streams * audio_s / mean,
    }


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run every stream count, write one JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(_PRESETS), default="tiny")
    parser.add_argument("--checkpoint", type=Path, help="real decoder folder (config.yaml, flow.pt, hift.pt)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32", help="tf32 = fp32 weights, TF32 matmuls")
    parser.add_argument("--streams", default="1,4,16,64", help="comma-separated concurrent stream counts")
    parser.add_argument("--schedule", default="10,20,40", help="tokens per chunk; the last size repeats")
    parser.add_argument("--tokens", type=int, default=150, help="speech tokens per stream (12.5 per second)")
    parser.add_argument("--hift-iters", type=int, default=2, help="timed HiFT-only calls per stream count (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON report")
    parser.add_argument("--ragged", type=int, default=1, help="stream i's chunks are i %% RAGGED tokens longer")
    parser.add_argument(
        "--hift",
        choices=["ragged", "grouped"],
        default="ragged",
        help="HiFT over all rows at once (the server's) or once per group of equal length (the previous path)",
    )
    parser.add_argument(
        "--graphs", action="store_true", help="flow ODE as CUDA graphs (bucketed; the server's default)"
    )
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.dtype == "tf32":  # only affects CUDA; CPU float32 matmuls have no TF32 mode
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    decoder = build_decoder(args, device, _DTYPES[args.dtype])
    decoder.ragged_hift = args.hift == "ragged"
    if args.graphs:
        decoder.flow.enable_graphs(use_graphs=device.type == "cuda")
    schedule = [int(s) for s in args.schedule.split(",")]
    sizes = chunk_sizes(schedule, args.tokens)
    run_streams(decoder, 1, sizes[:1], args.seed)  # warm-up (allocator, kernels, oneDNN primitives)
    if args.graphs:  # capture every bucket the timed runs will meet, as a served warm-up round does
        for n in (int(s) for s in args.streams.split(",")):
            run_streams(decoder, n, sizes, args.seed, args.ragged)

    syncs = count_syncs(decoder, sizes, args.seed, args.ragged) if device.type == "cuda" else None
    if syncs is not None:
        print(f"host synchronisations per decode_batch call: {syncs}", flush=True)

    results, hift_rows = [], []
    report = {
        "benchmark": "speech_decoder",
        "preset": "checkpoint" if args.checkpoint else args.preset,
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": args.dtype,
        "cuda_graphs": bool(args.graphs),
        "hift": args.hift,
        "syncs_per_decode_batch": syncs,
        "ragged": args.ragged,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "schedule": schedule,
        "tokens_per_stream": args.tokens,
        "results": results,
        "hift_only": hift_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for n in (int(s) for s in args.streams.split(",")):
        row = run_streams(decoder, n, sizes, args.seed, args.ragged)
        results.append(row)
        msg = (
            f"streams {n:3d}: rtf {row['rtf']:7.3f}  x{row['x_realtime']:7.2f} real time  "
            f"first chunk {row['first_chunk_s'] * 1000:8.1f} ms  max stall ratio {row['max_stall_ratio']:.2f}"
        )
        if args.hift_iters:
            h = run_hift_only(decoder, n, decoder.mel_frames(schedule[-1]) + 1, args.hift_iters, args.seed)
            hift_rows.append(h)
            msg += f"  | HiFT only rtf {h['rtf']:.4f}"
        print(msg, flush=True)
        # Rewritten after every stream count, so a run stopped by a time limit keeps what it measured.
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
