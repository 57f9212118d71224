"""GPU check of decoder passes interleaved between ODE steps (what the scheduler's preemption does), before a suite.

A long pass (8 rows of 100 history + 104 new tokens) is started; after 3 of its ODE steps a short pass (2 first
chunks of 10 tokens) runs whole, then the long pass ends. Both must equal the same passes run one after the other
(the CUDA graphs of the two buckets share one memory pool; each pass's ODE state lives in its bucket's buffers).
Then a short pass interrupted by another short pass of the SAME bucket (the second runs eagerly on fresh buffers).
Also times a plain pass against the same pass stepped with `wait()` between steps (the preemption's throttle).

    python -m bench.check_interleave_cuda --out $OUT/interleave.json
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import numpy as np
import torch

from bench.bench_speech_decoder import build_decoder
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig


def requests(decoder, rows: int, history: int, new: int, seed: int) -> list:
    """Fresh streams brought to `history` decoded tokens, then one chunk of `new` tokens each (seeded noise)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rows):
        stream = decoder.open_stream(config=DecoderStreamConfig(schedule=(max(history, 6),), max_prompt_tokens=100))
        if history:
            stream.commit(decoder.decode_batch([stream.prepare(rng.integers(0, 16384, history))])[0])
        out.append(stream.prepare(rng.integers(0, 16384, new), size=new))
    return out


def regen(reqs: list, seed: int, device: str) -> list:
    for i, r in enumerate(reqs):
        r.generator = torch.Generator(device=device).manual_seed(seed + i)
    return reqs


def run_to_end(decode_pass) -> list:
    while decode_pass.step():
        pass
    return decode_pass.finish()


def diff(a: list, b: list) -> float:
    return max(float(np.abs(x.speech - y.speech).max()) for x, y in zip(a, b, strict=True))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="/tmp/out/interleave.json")
    p.add_argument("--device", default="cuda", help="cpu: a check of this script (tiny preset, no graphs)")
    args = p.parse_args()
    device = args.device
    cuda = device == "cuda"
    preset, dtype = ("full", torch.bfloat16) if cuda else ("tiny", torch.float32)
    decoder = build_decoder(SimpleNamespace(checkpoint=None, preset=preset, seed=0), torch.device(device), dtype)
    decoder.flow.enable_graphs(use_graphs=cuda)
    started = time.perf_counter()
    decoder.flow.graphed.warmup(8, decoder.mel_frames(204), decoder.flow.input_embedding.weight)
    capture_s = time.perf_counter() - started
    long_reqs, short_reqs = requests(decoder, 8, 100, 104, 1), requests(decoder, 2, 0, 10, 2)
    same_reqs = requests(decoder, 2, 0, 12, 3)

    seq_long = decoder.decode_batch(regen(long_reqs, 10, device))
    seq_short = decoder.decode_batch(regen(short_reqs, 20, device))
    seq_same = decoder.decode_batch(regen(same_reqs, 30, device))

    outer = decoder.begin_batch(regen(long_reqs, 10, device))
    for _ in range(3):
        outer.step()
        outer.wait()
    got_short = run_to_end(decoder.begin_batch(regen(short_reqs, 20, device)))
    got_long = run_to_end(outer)

    outer = decoder.begin_batch(regen(short_reqs, 20, device))
    outer.step()
    got_same = run_to_end(decoder.begin_batch(regen(same_reqs, 30, device)))  # same bucket: eager, fresh buffers
    got_short2 = run_to_end(outer)

    def timed(stepwise: bool) -> float:
        times = []
        for _ in range(5):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            dp = decoder.begin_batch(regen(long_reqs, 10, device))
            while dp.step():
                if stepwise:
                    dp.wait()
            dp.finish()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    result = {
        "gpu": torch.cuda.get_device_name() if cuda else "cpu",
        "capture_s": round(capture_s, 1),
        "long_interrupted_max_abs_diff": diff(got_long, seq_long),
        "short_between_steps_max_abs_diff": diff(got_short, seq_short),
        "same_bucket_eager_max_abs_diff": diff(got_same, seq_same),
        "same_bucket_outer_max_abs_diff": diff(got_short2, seq_short),
        "long_pass_ms_plain": round(1000 * timed(False), 1),
        "long_pass_ms_stepwise_wait": round(1000 * timed(True), 1),
    }
    print(json.dumps(result, indent=2))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
