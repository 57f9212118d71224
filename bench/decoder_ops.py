"""Eager ops per decoder pass, by phase: `python -m bench.profile_decoder --sections ops` (any device).

Counted at dispatch (a TorchDispatchMode), so the count is the same on a CPU as on a GPU for the same code path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import glm4voice_api.models.speech_decoder.decoder as dec_mod
from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.models.speech_decoder.flow_graphs import OdeRun


def ops_per_phase(
    decoder: SpeechDecoder, requests: Callable, shapes: tuple = ((1, 0, 10), (4, 100, 26))
) -> list[dict[str, Any]]:
    """Eager aten ops per pass, by phase (flow encoder, ODE steps, HiFT, the rest), counted at dispatch (any device).

    Why: what runs outside the ODE's CUDA graphs is launched op by op from Python, whatever the pass's size, so it is
    a floor under every pass (the "fixed part" of the pass-cost fits). On the CPU at full size, 10 eager steps:
    encoder 315, ODE 16360, HiFT 658, the rest ~150 ops per pass; with the graphs the ODE's ops become replays."""

    class Count(TorchDispatchMode):
        phase = "other"

        def __init__(self) -> None:
            super().__init__()
            self.n: dict[str, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n[self.phase] = self.n.get(self.phase, 0) + 1
            return func(*args, **(kwargs or {}))

    mode = Count()

    def labelled(fn, name):
        def wrapper(*a, **k):
            before, mode.phase = mode.phase, name
            try:
                return fn(*a, **k)
            finally:
                mode.phase = before

        return wrapper

    saved = (decoder.flow.encode, OdeRun.step, dec_mod.vocode_ragged)
    decoder.flow.encode = labelled(saved[0], "encode")
    OdeRun.step = labelled(saved[1], "ode")
    dec_mod.vocode_ragged = labelled(saved[2], "hift")
    out = []
    try:
        for rows, ctx, new in shapes:
            with torch.inference_mode():
                decoder.decode_batch(requests(decoder, rows, ctx, new))  # captures, caches: not counted
                reqs = requests(decoder, rows, ctx, new)
                mode.n = {}
                with mode:
                    decoder.decode_batch(reqs)
            out.append({"rows": rows, "context": ctx, "new": new, "ode_steps": decoder.ode_steps, "ops": dict(mode.n)})
            print("ops", out[-1], flush=True)
    finally:
        del decoder.flow.encode  # the instance attribute set above; the class's method again
        OdeRun.step, dec_mod.vocode_ragged = saved[1], saved[2]
    return out


HIFT_SHAPES = ((1, 30), (4, 100), (16, 141), (32, 141), (16, 276))
"""(rows, mel frames) of a ragged HiFT pass: a first chunk, mid chunks, 80- and 156-token chunks (+ the cache)."""


def hift_compiled_vs_eager(decoder: SpeechDecoder, iters: int = 5) -> list[dict[str, Any]]:
    """HiFT's ragged pass per shape, eager vs with its elementwise steps compiled (`--speech-decoder.compile-hift`):
    median wall ms (synchronised), host-side ops launched (profiler's top-level events) and the largest waveform
    difference. Rows of one pass differ by a few frames, as a decoder pass's do."""
    import statistics
    import time

    from glm4voice_api.models.speech_decoder.compiled import compile_hift, uncompile_hift, warm_hift
    from glm4voice_api.models.speech_decoder.hift_ragged import vocode_ragged

    device = decoder.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    n_mels = decoder.flow.cfg.output_size

    def run(rows: int, frames: int) -> list:
        gen = torch.Generator().manual_seed(rows * 1000 + frames)
        lengths = [frames - (i * 3) % 7 for i in range(rows)]
        mels = [(torch.randn(n_mels, n, generator=gen) - 5).to(device) for n in lengths]
        gens = [torch.Generator(device=device).manual_seed(i) for i in range(rows)]
        with torch.inference_mode():
            return vocode_ragged(decoder.hift, mels, [None] * rows, [None] * rows, gens)

    def measure(rows: int, frames: int) -> tuple[float, int, list]:
        out = run(rows, frames)
        times = []
        for _ in range(iters):
            sync()
            start = time.perf_counter()
            run(rows, frames)
            sync()
            times.append((time.perf_counter() - start) * 1000)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run(rows, frames)
        ops = len([e for e in prof.events() if e.cpu_parent is None])
        return round(statistics.median(times), 2), ops, out

    eager = {shape: measure(*shape) for shape in HIFT_SHAPES}
    compile_hift(decoder)
    try:
        warm_hift(decoder)
        rows = []
        for shape in HIFT_SHAPES:
            ms, ops, out = measure(*shape)
            diff = max(float((a[0].float() - b[0].float()).abs().max()) for a, b in zip(eager[shape][2], out))
            row = {"rows": shape[0], "frames": shape[1], "eager_ms": eager[shape][0], "compiled_ms": ms}
            rows.append(row | {"eager_ops": eager[shape][1], "compiled_ops": ops, "max_abs_diff": diff})
            print("hift_compiled", rows[-1], flush=True)
    finally:
        uncompile_hift(decoder)
    return rows
