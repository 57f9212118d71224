"""Would splitting the GPU's SMs between the LLM and the speech decoder (CUDA green contexts) shorten passes?

Why: at 32 streams a first chunk's pass takes 60-140 ms beside the LLM's steps against ~33 ms alone, and the LLM's
steps stretch while passes run (bench/results/GPU.md). Both share one CUDA context today (the decoder on a
high-priority stream of vLLM's process); the LLM's large GEMMs fill every SM, and the decoder's thousands of small
kernels queue behind them. A green context gives a stream a fixed set of SMs, inside one process and without
touching the device's settings (no MPS): the decoder could keep, say, 24 of 132 SMs to itself while the LLM keeps
the rest. This probe measures, before any serving change:

- the decoder as served (full-size random weights, bf16, blocks compiled, flow CUDA graphs, 5 ODE steps): the
  wall time of one pass per shape (rows x context + new tokens), alone and beside the LLM-like load;
- an LLM-like load in a thread: one decode step of the 9B's shape (40 layers of QKV / O / gate-up / down GEMMs
  and the LM head, batch 32, bf16, ~17.7 GB of weights read per step), a host sync per step as vLLM's engine does;
  its steps per second alone and while the decoder runs passes back to back;
- per configuration: `shared` (today: one context, the decoder's stream at high priority) and `greenN` (the decoder
  on a green context of N SMs, the load on one of the remaining SMs).

    python -m bench.green_probe --out /tmp/green.json                        # on a GPU
    python -m bench.green_probe --device cpu --preset tiny --plan-only --out /tmp/g.json   # the SM plan only
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import torch

from bench.bench_speech_decoder import _DTYPES, add_profile_args, build_decoder
from bench.profile_decoder import requests
from glm4voice_api.pipeline.green_split import GreenSplit

SHAPES = ((1, 0, 10), (4, 100, 26), (16, 100, 52))
"""(rows, context tokens, new tokens): a lone first chunk, a pass at 32 streams, a large later pass."""

# 9B decode step: (in, out) of each layer's GEMMs (fused QKV with 2 KV groups, O, fused gate-up, down), and the LM head.
LAYER_GEMMS = ((4096, 4608), (4096, 4096), (4096, 27392), (13696, 4096))
LAYERS = 40
LM_HEAD = (4096, 168960)


def sm_plan(total_sms: int, decoder_sms: list[int], granularity: int = 8) -> list[tuple[int, int]]:
    """(decoder SMs, load SMs) per requested split: counts rounded up to the hardware's granularity, splits that
    leave the load fewer than `granularity` SMs dropped, duplicates removed (order kept)."""
    out: list[tuple[int, int]] = []
    for n in decoder_sms:
        d = -(-n // granularity) * granularity
        if 0 < d <= total_sms - granularity and (d, total_sms - d) not in out:
            out.append((d, total_sms - d))
    return out


# -- the two workloads ---------------------------------------------------------------------------------------------


class LLMLoad:
    """A 9B-shaped decode step, stepped back to back in a thread on `stream`, counting steps."""

    def __init__(self, device: torch.device, batch: int, scale: float = 1.0) -> None:
        def w(i: int, o: int) -> torch.Tensor:
            return torch.randn(max(1, int(i * scale)), max(1, int(o * scale)), device=device, dtype=torch.bfloat16)

        self.layers = [[w(i, o) for i, o in LAYER_GEMMS] for _ in range(LAYERS)]
        self.head = w(*LM_HEAD)
        self.x = torch.randn(batch, self.layers[0][0].shape[0], device=device, dtype=torch.bfloat16)
        self.steps = 0
        self.duty = 1.0
        """Busy share: below 1 the thread idles (1 / duty - 1) of each step's time after it (a paced LLM)."""
        self._init_thread_state()

    def _init_thread_state(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> None:
        x = self.x
        for qkv, o, gate_up, down in self.layers:
            h = x @ qkv
            x = x + h[:, : o.shape[0]] @ o
            g = x @ gate_up
            x = x + g[:, : down.shape[0]] @ down
        (x @ self.head).argmax(-1)

    def start(self, stream: torch.cuda.Stream, timeout_s: float = 60.0) -> None:
        def run() -> None:
            try:
                with torch.cuda.stream(stream), torch.inference_mode():
                    while not self._stop.is_set():
                        t0 = time.perf_counter()
                        self.step()
                        stream.synchronize()
                        self.steps += 1
                        if self.duty < 1:
                            time.sleep((time.perf_counter() - t0) * (1 / self.duty - 1))
            except RuntimeError as e:  # a stream the driver refuses: reported by start(), not lost in the thread
                self.error = f"{type(e).__name__}: {e}"

        self._stop.clear()
        self.error: str | None = None
        first, deadline = self.steps, time.perf_counter() + timeout_s
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        while self.steps < first + 3:  # past the first steps on this stream (cuBLAS's workspace for it)
            if self.error or time.perf_counter() > deadline:
                self.stop()
                raise RuntimeError(f"the LLM-like load did not run: {self.error or 'no step within the timeout'}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def rate(self, seconds: float) -> float:
        s0, t0 = self.steps, time.perf_counter()
        time.sleep(seconds)
        return (self.steps - s0) / (time.perf_counter() - t0)


def pass_ms(decoder, shape: tuple[int, int, int], stream: torch.cuda.Stream, iters: int) -> float:
    times = []
    with torch.cuda.stream(stream):
        for i in range(iters + 1):
            reqs = requests(decoder, *shape, seed=i)
            stream.synchronize()
            t0 = time.perf_counter()
            decoder.decode_batch(reqs)
            stream.synchronize()
            if i:  # the first is a warm-up on this stream
                times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1000, 2)


def measure(
    decoder, load: LLMLoad, dec_stream, load_stream, iters: int, seconds: float, shapes: tuple = SHAPES
) -> dict[str, Any]:
    """Pass times per shape alone and beside the load, the load's rate alone and beside passes of `shapes[1]`."""
    row: dict[str, Any] = {"alone_ms": {}, "beside_load_ms": {}}
    for shape in shapes:
        row["alone_ms"]["x".join(map(str, shape))] = pass_ms(decoder, shape, dec_stream, iters)
    load.start(load_stream)
    try:
        row["load_steps_per_s_alone"] = round(load.rate(seconds), 1)
        for shape in shapes:
            row["beside_load_ms"]["x".join(map(str, shape))] = pass_ms(decoder, shape, dec_stream, iters)
        # The load's rate while the decoder is never idle (4-row passes back to back, as at 32 streams).
        s0, t0 = load.steps, time.perf_counter()
        n = 0
        with torch.cuda.stream(dec_stream):
            while time.perf_counter() - t0 < seconds:
                decoder.decode_batch(requests(decoder, *shapes[1], seed=n))
                dec_stream.synchronize()
                n += 1
        elapsed = time.perf_counter() - t0
        row["load_steps_per_s_beside_decoder"] = round((load.steps - s0) / elapsed, 1)
        row["decoder_passes_per_s_beside_load"] = round(n / elapsed, 1)
    finally:
        load.stop()
    return row


# The server's decoder defaults (glm4voice_api/config.py; a test keeps them equal), for GPU machines without pydantic:
# there this probe runs without the carried bundle.
SERVED = {"ode_steps": 5, "graph_batches": (1, 2, 4, 8, 16, 32), "max_batch": 32, "max_prompt_tokens": 100}
SERVED_LONGEST_CHUNK = 156


def build_served_decoder(args: argparse.Namespace, device: torch.device):
    """The decoder as the server prepares it: 5 ODE steps, blocks compiled, every bucket's CUDA graph captured."""
    decoder = build_decoder(args, device, _DTYPES[args.dtype])
    decoder.set_ode_steps(SERVED["ode_steps"])
    if device.type != "cuda":
        return decoder
    try:
        from glm4voice_api.config import Settings
        from glm4voice_api.pipeline.runtime import _prepare_flow
    except ImportError:  # no pydantic here: the same steps as _prepare_flow, on the defaults above
        decoder.flow.decoder.estimator.compile_blocks()
        decoder.flow.enable_graphs()
        graphed = decoder.flow.graphed
        graphed.set_batch_buckets(list(SERVED["graph_batches"]))
        frames = decoder.mel_frames(SERVED["max_prompt_tokens"] + SERVED_LONGEST_CHUNK)
        graphed.warmup(SERVED["max_batch"], frames, decoder.flow.input_embedding.weight)
        return decoder
    _prepare_flow(decoder, Settings(), str(device))
    return decoder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_profile_args(p)
    p.add_argument("--decoder-sms", default="16,24,32,48,64", help="SMs of the decoder's green context, per run")
    p.add_argument("--batch", type=int, default=32, help="rows of the LLM-like step")
    p.add_argument("--seconds", type=float, default=2.0, help="each rate's measuring window")
    p.add_argument("--plan-only", action="store_true", help="write the SM plan and stop (no GPU needed)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.checkpoint, args.seed = None, 0
    device = torch.device(args.device)
    total = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
    report: dict[str, Any] = {"benchmark": "green_probe", "total_sms": total, "shapes": [list(s) for s in SHAPES]}
    report["plan"] = sm_plan(total, [int(n) for n in args.decoder_sms.split(",") if n])

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    if args.plan_only or device.type != "cuda":
        save()
        return
    report["device_name"] = torch.cuda.get_device_name(device)
    report["torch"] = torch.__version__
    t0 = time.perf_counter()
    decoder = build_served_decoder(args, device)
    report["decoder_ready_s"] = round(time.perf_counter() - t0, 1)
    load = LLMLoad(device, args.batch)
    runs: dict[str, Any] = {}
    report["runs"] = runs
    # Today's configuration: one context, the decoder's stream at high priority, the load's at normal priority.
    runs["shared"] = measure(
        decoder,
        load,
        torch.cuda.Stream(device, priority=-1),
        torch.cuda.Stream(device),
        args.iters,
        args.seconds,
    )
    print("shared", runs["shared"], flush=True)
    save()
    splits = []  # kept alive: a destroyed green context would take its stream with it
    for dec_sms, _ in report["plan"]:
        name = f"green{dec_sms}"
        try:
            split = GreenSplit(dec_sms, device.index or 0)
            splits.append(split)
            runs[name] = {"sms": list(split.sms)}
            runs[name].update(measure(decoder, load, split.streams[0], split.streams[1], args.iters, args.seconds))
        except (
            RuntimeError,
            OSError,
            AttributeError,
        ) as e:  # a driver without green contexts, or a split it refuses: recorded, not fatal
            runs[name] = {"error": f"{type(e).__name__}: {e}"}
        print(name, runs[name], flush=True)
        save()
    # The load alone on all SMs once more, and the shared run again (drift between the first and last runs).
    runs["shared_again"] = measure(
        decoder, load, torch.cuda.Stream(device, priority=-1), torch.cuda.Stream(device), args.iters, args.seconds
    )
    print("shared_again", runs["shared_again"], flush=True)
    save()


if __name__ == "__main__":
    main()
