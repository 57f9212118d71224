"""Does less memory traffic relieve the speech decoder beside the LLM? FP8 weights, a leaner decoder, a paced LLM.

Why: session 32's green-context probe (bench/green_probe.py) showed the decoder and the LLM contend for HBM
bandwidth, not SMs: a lone first chunk's pass took 25 ms alone and 84 ms beside a 9B-shaped decode load that reads
~2.4 TB/s. Three levers cut traffic, and this probe measures each in one process before any serving change:

- `fp8`: the load's weights in float8 e4m3 (half the bytes a step reads), its input quantized per call as vLLM's
  dynamic FP8 does, GEMMs through `torch._scaled_mm`. If the load stays bandwidth-bound it just steps faster and
  keeps HBM as busy (what session 24's server run suggested: passes longer under FP8); if not, passes shorten.
- `lean`: the decoder with 4 ODE steps and 50 tokens of context (the served 5 and 100), both fidelity trades.
- `paced`: the load idles after each step for (1 / duty - 1) of the step's time, as an LLM paced to `duty` would
  while every stream has seconds of tokens ahead: the decoder gets uncontended windows.

Per configuration: pass wall time per shape (rows x context + new tokens) alone and beside the load, the load's
steps per second alone and beside passes back to back, and the passes per second it leaves the decoder.

    python -m bench.traffic_probe --out /tmp/traffic.json                 # on a GPU (no vLLM needed)
    python -m bench.traffic_probe --device cpu --preset tiny --out /tmp/t.json   # the load's step only (CPU check)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from bench import green_probe
from bench.bench_speech_decoder import add_profile_args
from bench.green_probe import LAYER_GEMMS, LAYERS, LM_HEAD, LLMLoad, build_served_decoder

FP8_MAX = 448.0
LEAN = {"ode_steps": 4, "context": 50}
SERVED = {"ode_steps": 5, "context": 100}


def shapes(context: int) -> tuple[tuple[int, int, int], ...]:
    """A lone first chunk, a pass at 32 streams, a large later pass (green_probe's, at this context)."""
    return ((1, 0, 10), (4, context, 26), (16, context, 52))


class FP8Load(LLMLoad):
    """The same 9B-shaped step with float8 weights (one scale each) and inputs quantized per GEMM call."""

    def __init__(self, device: torch.device, batch: int, scale: float = 1.0) -> None:
        def w(i: int, o: int) -> torch.Tensor:
            i, o = max(16, int(i * scale) // 16 * 16), max(16, int(o * scale) // 16 * 16)
            # _scaled_mm wants the second operand column-major: (out, in) row-major, transposed
            return torch.randn(o, i, device=device).div_(i**0.5).to(torch.float8_e4m3fn).t()

        self.layers = [[w(i, o) for i, o in LAYER_GEMMS] for _ in range(LAYERS)]
        self.head = w(*LM_HEAD)
        self.one = torch.ones((), device=device)
        self.x = torch.randn(batch, self.layers[0][0].shape[0], device=device, dtype=torch.bfloat16)
        self.steps = 0
        self.duty = 1.0
        self._init_thread_state()

    def mm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = x.abs().amax().float().clamp(min=1e-12) / FP8_MAX  # dynamic per-tensor scale: one reduction per call
        q = (x.float() / s).to(torch.float8_e4m3fn)
        return torch._scaled_mm(q, w, scale_a=s, scale_b=self.one, out_dtype=torch.bfloat16)

    def step(self) -> None:
        x = self.x
        for qkv, o, gate_up, down in self.layers:
            h = self.mm(x, qkv)
            x = x + self.mm(h[:, : o.shape[0]].contiguous(), o)
            g = self.mm(x, gate_up)
            x = x + self.mm(g[:, : down.shape[0]].contiguous(), down)
        self.mm(x, self.head).argmax(-1)


def measure(decoder, load: LLMLoad, context: int, iters: int, seconds: float, device: torch.device) -> dict[str, Any]:
    """green_probe.measure's row on one shared context (the decoder's stream at high priority, as served)."""
    dec_stream, load_stream = torch.cuda.Stream(device, priority=-1), torch.cuda.Stream(device)
    row = green_probe.measure(decoder, load, dec_stream, load_stream, iters, seconds, shapes(context))
    return {"duty": load.duty, **row}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_profile_args(p)
    p.add_argument("--batch", type=int, default=32, help="rows of the LLM-like step")
    p.add_argument("--seconds", type=float, default=2.0, help="each rate's measuring window")
    p.add_argument("--duty", type=float, default=0.6, help="the paced load's busy share")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.checkpoint, args.seed = None, 0
    device = torch.device(args.device)
    report: dict[str, Any] = {"benchmark": "traffic_probe", "lean": LEAN, "served": SERVED, "duty": args.duty}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")

    if device.type != "cuda":  # a CPU check of the loads' steps (tiny shapes)
        for load in (LLMLoad(device, 2, scale=1 / 64), FP8Load(device, 16, scale=1 / 64)):
            load.step()
        report["cpu_check"] = "ok"
        save()
        return
    report["device_name"] = torch.cuda.get_device_name(device)
    report["torch"] = torch.__version__
    decoder = build_served_decoder(args, device)
    bf16, fp8 = LLMLoad(device, args.batch), FP8Load(device, args.batch)
    runs: dict[str, Any] = {}
    report["runs"] = runs
    plan = [
        ("bf16", bf16, SERVED, 1.0),
        ("fp8", fp8, SERVED, 1.0),
        ("bf16_lean", bf16, LEAN, 1.0),
        ("fp8_lean", fp8, LEAN, 1.0),
        ("bf16_paced", bf16, SERVED, args.duty),
        ("bf16_again", bf16, SERVED, 1.0),
    ]
    for name, load, rules, duty in plan:
        try:
            decoder.set_ode_steps(rules["ode_steps"])
            load.duty = duty
            runs[name] = measure(decoder, load, rules["context"], args.iters, args.seconds, device)
        except (RuntimeError, TypeError) as e:  # e.g. a torch without this _scaled_mm: recorded, not fatal
            runs[name] = {"error": f"{type(e).__name__}: {e}"}
        print(name, runs[name], flush=True)
        save()


if __name__ == "__main__":
    main()
