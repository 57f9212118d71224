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

    saved = (decoder.flow.encode, OdeRun.step, dec_mod.vocode_padded)
    decoder.flow.encode = labelled(saved[0], "encode")
    OdeRun.step = labelled(saved[1], "ode")
    dec_mod.vocode_padded = labelled(saved[2], "hift")
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
        OdeRun.step, dec_mod.vocode_padded = saved[1], saved[2]
    return out


PASS_SHAPES = ((1, 0, 10), (4, 100, 26), (16, 100, 52), (32, 100, 80))
"""(rows, context tokens, new tokens) of a decoder pass: a first chunk, and later chunks of growing size."""


def outside_graphs_compiled_vs_eager(decoder: SpeechDecoder, requests: Callable, iters: int = 5) -> list[dict]:
    """A whole decoder pass per shape, eager vs with the parts outside the flow's graphs compiled
    (`--speech-decoder.compile-outside-graphs`: HiFT's elementwise steps, the flow encoder's layers): median wall
    ms (synchronised), host-side ops launched (the profiler's top-level events) and the largest audio difference."""
    import statistics
    import time

    from glm4voice_api.models.speech_decoder.compiled import (
        compile_outside_graphs,
        uncompile_outside_graphs,
        warm_outside_graphs,
    )

    device = decoder.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def run(shape: tuple[int, int, int]) -> list:
        with torch.inference_mode():
            return decoder.decode_batch(requests(decoder, *shape))

    def measure(shape: tuple[int, int, int]) -> tuple[float, int, list]:
        out = run(shape)  # graph captures, allocator
        times = []
        for _ in range(iters):
            sync()
            start = time.perf_counter()
            run(shape)
            sync()
            times.append((time.perf_counter() - start) * 1000)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run(shape)
        ops = len([e for e in prof.events() if e.cpu_parent is None])
        return round(statistics.median(times), 2), ops, out

    eager = {shape: measure(shape) for shape in PASS_SHAPES}
    compile_outside_graphs(decoder)
    try:
        warm_outside_graphs(decoder)
        rows = []
        for shape in PASS_SHAPES:
            ms, ops, out = measure(shape)
            diff = max(float(abs(a.speech - b.speech).max()) for a, b in zip(eager[shape][2], out, strict=True))
            row = {"rows": shape[0], "context": shape[1], "new": shape[2], "eager_ms": eager[shape][0]}
            rows.append(
                row | {"compiled_ms": ms, "eager_ops": eager[shape][1], "compiled_ops": ops, "max_abs_diff": diff}
            )
            print("outside_graphs_compiled", rows[-1], flush=True)
    finally:
        uncompile_outside_graphs(decoder)
    return rows


def new_shape_cost(decoder: SpeechDecoder, lengths: tuple[int, ...] = (37, 53, 71, 89, 107, 131, 157, 181)) -> dict:
    """A ragged HiFT pass (1 row) and the flow's length regulator on mel lengths not seen before: the first call's
    wall ms against the second's (same shape), synchronised. Why: the convolutions' backend (cuDNN) builds and
    caches an execution plan per input shape, and HiFT's and the regulator's lengths change from pass to pass
    (neither is padded to a bucket as the ODE's graphs are); a large first-call cost would make bucketing their
    lengths worth it (exact: the ragged path masks padding)."""
    import time

    from glm4voice_api.models.speech_decoder.hift_ragged import vocode_padded

    device = decoder.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    flow = decoder.flow
    n_mels = flow.cfg.output_size

    def timed(fn) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return round((time.perf_counter() - start) * 1000, 2)

    rows = []
    with torch.inference_mode():
        for n in lengths:
            mel = torch.randn(n_mels, n, device=device) - 5
            gen = torch.Generator(device=device)

            def hift(mel=mel, gen=gen):
                vocode_padded(decoder.hift, [mel], [None], [None], [gen.manual_seed(0)])

            tokens = max(2, n // 2)
            h = torch.randn(1, tokens, n_mels, device=device, dtype=flow.input_embedding.weight.dtype)

            def regulate(h=h, tokens=tokens):
                flow.regulate(h, [tokens])

            rows.append(
                {"frames": n, "regulator_tokens": tokens, "hift_first_ms": timed(hift), "hift_again_ms": timed(hift)}
                | {"regulate_first_ms": timed(regulate), "regulate_again_ms": timed(regulate)}
            )
            print("new_shape_cost", rows[-1], flush=True)
    return {"rows": rows}
