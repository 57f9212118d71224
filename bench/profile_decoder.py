"""Where a speech-decoder pass spends its time, and how it behaves beside an LLM-like GPU load.

Answers four questions the serving core's design depends on (full-size random weights, bf16, flow graphs):

1. phases: per pass shape (rows x context + new tokens), the GPU time of the flow encoder, the 10-step ODE and
   HiFT (CUDA events), the pass's wall time, and how many kernels one eager ODE step launches;
2. compile: the same passes with the flow estimator compiled by ``torch.compile`` (fused kernels inside the same
   CUDA graphs), and the largest difference of its mel from the uncompiled one;
3. kernels: one ODE step's GPU time by kernel kind (attention, GEMM, conv, fused, norm, elementwise) per pass shape,
   with eager blocks; `kernels_compiled`: the same with the blocks compiled as the server runs them;
4. contention: the pass's wall time while an LLM-like load (memory-bound bf16 GEMMs of a decode step, a host sync
   per step, as vLLM's engine does) runs in ANOTHER process (two CUDA contexts time-slice) or in a thread of THIS
   process on its own stream (one context: kernels can overlap), and the load's steps/s in each case.

    python -m bench.profile_decoder --device cuda --out /tmp/profile.json
    python -m bench.profile_decoder --device cpu --preset tiny --out /tmp/profile.json   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.bench_speech_decoder import _DTYPES, add_profile_args, build_decoder
from glm4voice_api.models.speech_decoder.chunks import ChunkRequest
from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.models.speech_decoder.flow_graphs import OdeRun

SHAPES = [(1, 0, 10), (1, 100, 40), (4, 100, 40), (16, 100, 20), (16, 100, 80), (32, 100, 80), (16, 100, 160)]
"""(rows, context tokens, new tokens) of one pass."""


def requests(decoder: SpeechDecoder, rows: int, context: int, new: int, seed: int = 0) -> list[ChunkRequest]:
    gen = torch.Generator().manual_seed(seed)
    vocab = decoder.flow.cfg.vocab_size
    n_mels = decoder.flow.cfg.output_size
    out = []
    for i in range(rows):
        toks = torch.randint(0, vocab, (context + new,), generator=gen).tolist()
        mel = torch.randn(n_mels, decoder.mel_frames(context), generator=gen).to(decoder.device) * 2 - 6
        dev_gen = torch.Generator(device=decoder.device).manual_seed(seed + i)
        req = ChunkRequest(toks[context:], toks[:context], mel, final=False, generator=dev_gen)
        if context:  # a later chunk carries its stream's held-back tail, cache frame and cache samples, as served
            tail = decoder.consts.mel_overlap_len
            req.overlap_tail = torch.randn(n_mels, tail, generator=gen).to(decoder.device) * 2 - 6
            req.cache_mel = torch.randn(n_mels, 1, generator=gen).to(decoder.device) * 2 - 6
            req.cache_source = (torch.randn(1, decoder.hop_length, generator=gen) * 0.01).to(decoder.device)
        out.append(req)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pass(decoder: SpeechDecoder, reqs_fn, iters: int) -> float:
    device = decoder.device
    decoder.decode_batch(reqs_fn())  # warm-up / graph capture
    _sync(device)
    times = []
    for _ in range(iters):
        reqs = reqs_fn()
        _sync(device)
        t0 = time.perf_counter()
        decoder.decode_batch(reqs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class PhaseTimer:
    """CUDA events around the flow encoder, the ODE and HiFT (monkeypatched in, removed by `close`)."""

    def __init__(self, decoder: SpeechDecoder) -> None:
        import glm4voice_api.models.speech_decoder.decoder as dec_mod

        self.events: dict[str, list[tuple[Any, Any]]] = {"encode": [], "ode": [], "hift": []}
        self._restore = []
        flow = decoder.flow
        self._wrap(flow, "encode", "encode")
        # Every ODE step, graphed or eager, goes through OdeRun.step (passes run step by step, see GraphedCFM.start).
        orig_step = OdeRun.step
        OdeRun.step = self._timed(orig_step, "ode")
        self._restore.append(lambda: setattr(OdeRun, "step", orig_step))
        self._wrap_module_fn(dec_mod, "vocode_padded", "hift")
        self.cuda = decoder.device.type == "cuda"

    def _mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def _timed(self, fn, name):
        def wrapper(*a, **k):
            s = self._mark()
            out = fn(*a, **k)
            self.events[name].append((s, self._mark()))
            return out

        return wrapper

    def _wrap(self, obj, attr, name):
        orig = getattr(obj, attr)
        setattr(obj, attr, self._timed(orig, name))
        self._restore.append(lambda: delattr(obj, attr) if attr in vars(obj) else None)

    def _wrap_module_fn(self, mod, attr, name):
        orig = getattr(mod, attr)
        setattr(mod, attr, self._timed(orig, name))
        self._restore.append(lambda: setattr(mod, attr, orig))

    def reset(self):
        for v in self.events.values():
            v.clear()

    def totals_ms(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
            return {k: sum(s.elapsed_time(e) for s, e in v) for k, v in self.events.items()}
        return {k: 1000 * sum(e - s for s, e in v) for k, v in self.events.items()}

    def close(self):
        for r in reversed(self._restore):
            r()


def _step_call(decoder: SpeechDecoder, rows: int, tokens: int, fill: Callable[..., torch.Tensor]) -> Callable[[], None]:
    """One eager Euler step of the flow's ODE for `rows` rows of `tokens` tokens, on the padded (masked) path the
    CUDA graphs capture; `fill` (torch.zeros / torch.randn) makes the state and the conditioning."""
    cfm, dev = decoder.flow.decoder, decoder.device
    t, dt = decoder.mel_frames(tokens), decoder.flow.input_embedding.weight.dtype
    x = fill(rows, 80, t, device=dev)
    mask2 = torch.ones(2 * rows, 1, t, device=dev, dtype=dt)
    mu2 = fill(2 * rows, 80, t, device=dev, dtype=dt)
    spks2 = torch.zeros(2 * rows, 80, device=dev, dtype=dt)
    time_, dt_ = torch.tensor(0.1, device=dev), torch.tensor(0.1, device=dev)
    return lambda: cfm.step(x, mask2, mu2, spks2, mu2, time_, dt_, padded=True)


def kernels_per_ode_step(decoder: SpeechDecoder, rows: int, frames_tokens: int) -> int | None:
    """Kernels one eager estimator step launches (what the CUDA graph replays, launch for launch)."""
    if decoder.device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    step = _step_call(decoder, rows, frames_tokens, torch.zeros)
    with torch.inference_mode():
        step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


KERNEL_SHAPES = [(1, 0, 10), (16, 100, 26), (16, 100, 80), (32, 100, 80)]
"""(rows, context tokens, new tokens) of the passes whose ODE step is split by kernel kind."""
_KINDS = (
    ("fused (triton)", ("triton_",)),  # first: inductor names its kernels after the ops they fuse ("..._convolution_")
    ("attention", ("fmha", "attention", "flash", "sdpa", "attn")),
    ("conv", ("conv", "fprop", "dgrad")),
    ("gemm", ("gemm", "cutlass", "nvjet", "xmma", "cublas", "sm90_", "sm80_", "ampere_")),
    ("norm / reduce", ("norm", "reduce", "welford", "moments")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "copy", "fill", "cat", "index")),
)


def kernel_kind(name: str) -> str:
    """What a CUDA kernel does, from its name (first match in `_KINDS`; attention before GEMM: its kernels are
    often cutlass-based)."""
    low = name.lower()
    return next((kind for kind, keys in _KINDS if any(k in low for k in keys)), "other")


def kernel_split(decoder: SpeechDecoder, rows: int, context: int, new: int) -> dict[str, Any] | None:
    """GPU time of one eager ODE step at this pass shape, by kernel kind, with the padded (masked-attention) path
    the CUDA graphs use. Why: per padded row-frame the step's cost is the serving core's bottleneck, and how much
    of it is attention over the context (quadratic in the row's frames, run through SDPA with a mask, so not a
    flash kernel) decides whether a mask-free attention or a shorter context is worth more than fewer steps."""
    if decoder.device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    t = decoder.mel_frames(context + new)
    step = _step_call(decoder, rows, context + new, torch.randn)
    with torch.inference_mode():
        for _ in range(2):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
    kinds: dict[str, float] = {}
    top: dict[str, float] = {}
    for e in prof.events():
        if e.device_type.name != "CUDA":
            continue
        us = float(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0) or 0.0)
        kinds[kernel_kind(e.name)] = kinds.get(kernel_kind(e.name), 0.0) + us
        top[e.name[:80]] = top.get(e.name[:80], 0.0) + us
    total = sum(kinds.values()) or 1.0
    return {
        "rows": rows,
        "context": context,
        "new": new,
        "frames": t,
        "step_gpu_ms": round(total / 1000, 3),
        "ms_by_kind": {k: round(v / 1000, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "share_by_kind": {k: round(v / total, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms": {k: round(v / 1000, 3) for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:8]},
    }


def compiled_kernel_split(decoder: SpeechDecoder) -> list[dict[str, Any] | None]:
    """`kernel_split` with the estimator's blocks compiled as the server runs them (`compile_blocks`): what is left
    of the eager step's elementwise share once inductor fuses the chains between the GEMMs and the attention."""
    if decoder.device.type != "cuda":
        return [None for _ in KERNEL_SHAPES]
    est = decoder.flow.decoder.estimator
    est.compile_blocks()
    try:
        rows = [kernel_split(decoder, *shape) for shape in KERNEL_SHAPES]
    finally:
        est.uncompile_blocks()
    for row in rows:
        print("kernels compiled", row, flush=True)
    return rows


def phases(decoder: SpeechDecoder, iters: int) -> list[dict[str, Any]]:
    timer = PhaseTimer(decoder)
    rows_out = []
    try:
        for rows, ctx, new in SHAPES:

            def make(rows=rows, ctx=ctx, new=new):
                return requests(decoder, rows, ctx, new)

            decoder.decode_batch(make())
            _sync(decoder.device)
            timer.reset()
            wall = time_pass(decoder, make, iters)
            tot = timer.totals_ms()
            n = iters + 1  # the warm-up inside time_pass is timed by the events too
            row = {
                "rows": rows,
                "context": ctx,
                "new": new,
                "wall_ms": round(wall * 1000, 2),
                **{f"{k}_ms": round(v / n, 2) for k, v in tot.items()},
                "audio_s": round(rows * new / 12.5, 2),
            }
            rows_out.append(row)
            print("phase", row, flush=True)
    finally:
        timer.close()
    return rows_out


def compiled(decoder: SpeechDecoder, iters: int, mode: str = "blocks") -> list[dict[str, Any]]:
    """The estimator compiled (inductor), captured in the same graphs; output compared with the uncompiled.

    mode: ``blocks`` (what the server does: `ConditionalDecoder.compile_blocks`) or ``whole`` (one graph)."""
    import torch._dynamo
    import torch._dynamo.utils

    torch._dynamo.config.cache_size_limit = 64
    flow = decoder.flow
    est = flow.decoder.estimator
    ref = {}
    shapes = [SHAPES[0], SHAPES[2], SHAPES[4], SHAPES[5]]
    # The references run eagerly (same buffers, no capture): clearing captured graphs and capturing again in one
    # process hit a caching-allocator assertion on the GPU, so this section must run before any capture.
    use_graphs = flow.graphed.use_graphs if flow.graphed is not None else False
    if flow.graphed is not None:
        flow.graphed.use_graphs = False
    for rows, ctx, new in shapes:
        reqs = requests(decoder, rows, ctx, new)
        ref[(rows, ctx, new)] = flow.forward_batch([_flow_input(r) for r in reqs])
    if flow.graphed is not None:
        flow.graphed.use_graphs = use_graphs
    t0 = time.perf_counter()
    # dynamic: one compile for every (rows, frames) bucket, as a server would need (42 static ones take too long)
    if mode == "whole":
        flow.decoder.estimator = torch.compile(est, dynamic=True)
    else:
        est.compile_blocks()
    if flow.graphed is not None:
        flow.graphed._graphs.clear()
    out = []
    try:
        for rows, ctx, new in shapes:

            def make(rows=rows, ctx=ctx, new=new):
                return requests(decoder, rows, ctx, new)

            c0 = time.perf_counter()
            decoder.decode_batch(make())
            _sync(decoder.device)
            first = time.perf_counter() - c0
            wall = time_pass(decoder, make, iters)
            mel = flow.forward_batch([_flow_input(r) for r in make()])
            diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(mel, ref[(rows, ctx, new)]))
            row = {
                "rows": rows,
                "context": ctx,
                "new": new,
                "wall_ms": round(wall * 1000, 2),
                "compile_and_capture_s": round(first, 1),
                "max_abs_mel_diff_vs_uncompiled": diff,
                "compiled_graphs_so_far": int(torch._dynamo.utils.counters["stats"]["unique_graphs"]),
            }
            out.append(row)
            print("compiled", row, flush=True)
    finally:
        flow.decoder.estimator = est
        est.uncompile_blocks()
        if flow.graphed is not None:
            flow.graphed._graphs.clear()
    print(f"compile section {time.perf_counter() - t0:.1f}s", flush=True)
    return out


def _flow_input(r: ChunkRequest):
    from glm4voice_api.models.speech_decoder.flow import FlowInput

    gen = torch.Generator(device=r.generator.device).manual_seed(7)
    return FlowInput(torch.tensor(r.prompt_tokens + r.tokens), r.prompt_mel, generator=gen)


# -- LLM-like load ---------------------------------------------------------------------------------------


def _llm_like_steps(device: str, stop: Any, counter: Any, gib: float, batch: int, priority: int = 0) -> None:
    """Decode-step-like GPU work: read `gib` GiB of bf16 weights through GEMMs with a small batch, then sync."""
    dev = torch.device(device)
    n = max(1, int(gib * 2**30 / (4096 * 14336 * 2)))
    weights = [torch.randn(4096, 14336, device=dev, dtype=torch.bfloat16) for _ in range(n)]
    x = torch.randn(batch, 4096, device=dev, dtype=torch.bfloat16)
    stream = torch.cuda.Stream(dev, priority=priority)
    with torch.cuda.stream(stream), torch.inference_mode():
        while not stop.is_set():
            for w in weights:
                y = x @ w
                x = y[:, :4096].contiguous()
            stream.synchronize()
            with counter.get_lock():
                counter.value += 1


def contention(decoder: SpeechDecoder, iters: int, gib: float) -> dict[str, Any]:
    shape = (16, 100, 80)

    def make():
        return requests(decoder, *shape)

    def load_rate(stop, counter, seconds=3.0):
        c0 = counter.value
        time.sleep(seconds)
        return (counter.value - c0) / seconds

    result: dict[str, Any] = {"shape": shape, "load_gib_per_step": gib}
    result["alone_ms"] = round(time_pass(decoder, make, iters) * 1000, 2)
    ctx = mp.get_context("spawn")
    for where in ("process", "thread"):
        if where == "process":
            stop, counter = ctx.Event(), ctx.Value("q", 0)
            worker = ctx.Process(target=_llm_like_steps, args=("cuda", stop, counter, gib, 32), daemon=True)
        else:
            stop, counter = threading.Event(), mp.Value("q", 0)
            worker = threading.Thread(target=_llm_like_steps, args=("cuda", stop, counter, gib, 32), daemon=True)
        worker.start()
        while counter.value < 5:
            time.sleep(0.05)
        alone_rate = load_rate(stop, counter)
        if where == "thread":  # the decoder on a high-priority stream of its own, as the in-process engine does
            side = torch.cuda.Stream(decoder.device, priority=-1)
            with torch.cuda.stream(side):
                wall = time_pass(decoder, make, iters)
        else:
            wall = time_pass(decoder, make, iters)
        busy_c0, t0 = counter.value, time.perf_counter()
        with torch.cuda.stream(torch.cuda.Stream(decoder.device, priority=-1)) if where == "thread" else _null():
            for _ in range(iters):
                decoder.decode_batch(make())
                _sync(decoder.device)
        rate_during = (counter.value - busy_c0) / (time.perf_counter() - t0)
        stop.set()
        worker.join(30)
        result[where] = {
            "decoder_pass_ms": round(wall * 1000, 2),
            "load_steps_per_s_alone": round(alone_rate, 1),
            "load_steps_per_s_during_decoder": round(rate_during, 1),
        }
        print("contention", where, result[where], flush=True)
    return result


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_profile_args(p)
    p.add_argument(
        "--sections",
        default="kernels,phases,compile,contention",
        help="also: kernels_compiled, ops, outside_graphs_compiled, new_shapes",
    )
    p.add_argument("--compile-mode", default="blocks", choices=("blocks", "whole"))
    p.add_argument("--load-gib", type=float, default=4.0, help="GiB of weights one LLM-like step reads")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.checkpoint, args.seed = None, 0
    device = torch.device(args.device)
    decoder = build_decoder(args, device, _DTYPES[args.dtype])
    decoder.flow.enable_graphs(use_graphs=device.type == "cuda")
    report: dict[str, Any] = {
        "benchmark": "profile_decoder",
        "preset": args.preset,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "compile_mode": args.compile_mode,
    }
    sections = args.sections.split(",")

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    if sections[0] == "compile":  # compile before any graph capture (see compiled())
        report["compiled"] = compiled(decoder, args.iters, args.compile_mode)
        save()
        sections = sections[1:]
    if "kernels" in sections:
        report["kernel_split"] = [kernel_split(decoder, *shape) for shape in KERNEL_SHAPES]
        for row in report["kernel_split"]:
            print("kernels", row, flush=True)
        save()
    if "kernels_compiled" in sections:  # the served path's blocks; eager steps, so before any graph capture
        report["kernel_split_compiled"] = compiled_kernel_split(decoder)
        save()
    if "phases" in sections:
        report["kernels_per_ode_step_1x256"] = kernels_per_ode_step(decoder, 1, 37)
        report["phases"] = phases(decoder, args.iters)
        save()
    if "ops" in sections:
        from bench.decoder_ops import ops_per_phase

        report["eager_ops_per_pass"] = ops_per_phase(decoder, requests)
        save()
    if "outside_graphs_compiled" in sections:
        from bench.decoder_ops import outside_graphs_compiled_vs_eager

        report["outside_graphs_compiled"] = outside_graphs_compiled_vs_eager(decoder, requests, args.iters)
        save()
    if "new_shapes" in sections:
        from bench.decoder_ops import new_shape_cost

        report["new_shape_cost"] = new_shape_cost(decoder)
        save()
    if "contention" in sections and device.type == "cuda":
        report["contention"] = contention(decoder, args.iters, args.load_gib)
        save()
    if "compile" in sections:
        report["compiled"] = compiled(decoder, args.iters, args.compile_mode)
        save()


if __name__ == "__main__":
    main()
