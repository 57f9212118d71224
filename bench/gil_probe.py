"""What a busy Python thread (the server's event loop) costs a decoder pass through the GIL, by switch interval.

Why: the decoder runs in a thread of the server process, beside the event loop (HTTP, SSE, vLLM's output
handling). Every op the decoder launches from Python (~2800 per 32-row pass outside the flow's CUDA graphs:
`bench/decoder_ops.py`) releases the GIL and takes it back; when the loop thread wants the GIL meanwhile, the take
can wait until the loop gives it up, at worst Python's switch interval (5 ms by default, `--switch-interval-ms`).
On a GPU a launch is microseconds, so these waits, not the kernels, can set a pass's host time.

Measured: the median wall time of a decoder pass per shape, alone and beside a thread that runs pure Python for
`duty` of every 10 ms (a stand-in for the loop; a real loop also gives the GIL up at every socket call, so this is
the harsh end), for each switch interval; and the same for a plain run of small ops (launch cost only).

    python -m bench.gil_probe --device cuda --out /tmp/gil.json          # full size, bf16, flow graphs
    python -m bench.gil_probe --device cpu --preset tiny --out /tmp/gil.json --shapes 1x0x10 --iters 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import torch

from bench.bench_speech_decoder import _DTYPES, add_profile_args, build_decoder
from bench.profile_decoder import requests

SWITCH_MS = (5.0, 1.0, 0.5)
DUTIES = (0.0, 0.3, 0.6, 0.9, 1.0)
"""1.0: a thread that never sleeps, as one stepping an engine back to back (`--engine.process inproc`)."""
PERIOD_S = 0.01


class BusyThread:
    """A thread that runs pure Python for `duty` of every PERIOD_S and sleeps the rest; counts its spins."""

    def __init__(self, duty: float) -> None:
        self.duty = duty
        self.spins = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            while time.perf_counter() - start < PERIOD_S * self.duty:
                self.spins += 1
            if self.duty < 1:
                time.sleep(PERIOD_S * (1 - self.duty))

    def __enter__(self) -> Self:
        if self.duty > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def _timed(run: Callable[[], None], sync: Callable[[], None], iters: int) -> float:
    """Median wall ms of `run` (synchronised), run on a thread of its own as the decoder's is."""
    times: list[float] = []

    def body() -> None:
        for _ in range(iters):
            sync()
            start = time.perf_counter()
            run()
            sync()
            times.append((time.perf_counter() - start) * 1000)

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    return round(statistics.median(times), 2)


def probe(
    decoder: Any,
    shapes: list[tuple[int, int, int]],
    iters: int,
    n_small_ops: int = 2000,
    on_row: Callable[[list[dict]], None] = lambda rows: None,
) -> dict:
    device = decoder.device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    a = torch.ones(256, device=device)

    def small_ops() -> None:
        for _ in range(n_small_ops):
            torch.add(a, a)

    def one_pass(shape: tuple[int, int, int]) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                decoder.decode_batch(requests(decoder, *shape))

        return run

    runs = {f"{n_small_ops} small ops": small_ops} | {"x".join(map(str, s)): one_pass(s) for s in shapes}
    for run in runs.values():  # warm-up: graph captures, allocator
        run()
    previous = sys.getswitchinterval()
    rows = []
    try:
        for switch_ms in SWITCH_MS:
            sys.setswitchinterval(switch_ms / 1000)
            for duty in DUTIES:
                row: dict[str, Any] = {"switch_ms": switch_ms, "duty": duty}
                with BusyThread(duty) as busy:
                    started, spins0 = time.perf_counter(), busy.spins
                    for name, run in runs.items():
                        row[name] = _timed(run, sync, iters)
                    row["busy_spins_per_s"] = round((busy.spins - spins0) / (time.perf_counter() - started))
                rows.append(row)
                print("gil", json.dumps(row), flush=True)
                on_row(rows)  # written as it goes: a run cut by its timeout keeps what it measured
    finally:
        sys.setswitchinterval(previous)
    return {"rows": rows, "period_s": PERIOD_S, "iters": iters}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_profile_args(p)
    p.add_argument("--shapes", default="1x0x10,16x100x26,32x100x80", help="rows x context x new tokens, comma list")
    p.add_argument("--ode-steps", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.checkpoint, args.seed = None, 0
    device = torch.device(args.device)
    decoder = build_decoder(args, device, _DTYPES[args.dtype])
    decoder.set_ode_steps(args.ode_steps)
    decoder.flow.enable_graphs(use_graphs=device.type == "cuda")
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",") if s]

    def write(rows: list[dict]) -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report | {"rows": rows}, indent=1) + "\n")

    report: dict[str, Any] = {
        "benchmark": "gil_probe",
        "preset": args.preset,
        "dtype": args.dtype,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "ode_steps": args.ode_steps,
        "note": "median wall ms per pass (and per run of small ops) on a thread of its own, beside a pure-Python "
        "thread busy `duty` of every 10 ms, per switch interval; flow ODE as CUDA graphs on a GPU (not compiled).",
    }
    result = probe(decoder, shapes, args.iters, on_row=write)  # type: ignore[arg-type]
    report |= {k: v for k, v in result.items() if k != "rows"}
    write(result["rows"])


if __name__ == "__main__":
    main()
