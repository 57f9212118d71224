"""Admission in bench/sim_schedule.py's simulated world: the real `CapacityController` driven in simulated time,
and what a run's admission did (who was admitted, how long they waited, where the limit went).

Why: the product's limit is not fixed: `glm4voice_api.serving.capacity.run_controller` updates it once a second from
the decoder scheduler's counters (underruns of settled streams, near misses), the LLM's generated tokens and the
admission queue's counts. The simulator feeds the same counters from its world, so controller policies can be ranked
on overload scenarios without a GPU. The figures are a model's, never GPU measurements.

    python -m bench.sim_schedule --streams 64 --stagger 8 --seconds 40 --hold off --model sliced_fixed_s=0.053 \
        --max-wait-s 10 --controller default --controller initial=24,settle_s=3
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from glm4voice_api.serving.capacity import CapacityController, CapacitySignals, initial_limit

if TYPE_CHECKING:
    from bench.sim_schedule import World

GPU_CEILING = 256
"""vLLM's max_num_seqs on a GPU: the controller's ceiling; the server starts at an eighth of it (`initial_limit`)."""


@dataclasses.dataclass(frozen=True)
class ControllerSpec:
    """A controller policy: CapacityController's fields (ceiling 256, initial 64 unless given) and the update
    interval (`interval_s`, 1 s as in run_controller)."""

    label: str
    fields: dict
    interval_s: float = 1.0

    def build(self) -> CapacityController:
        return CapacityController(**({"ceiling": GPU_CEILING, "initial": initial_limit(GPU_CEILING)} | self.fields))


def parse_controller(text: str) -> ControllerSpec:
    """`default` (today's server on a GPU), or KEY=VALUE,... over CapacityController's fields and `interval_s`."""
    if text.strip() in ("", "default"):
        return ControllerSpec("default", {})
    types = {f.name: f.type for f in dataclasses.fields(CapacityController)}
    fields: dict = {}
    interval = 1.0
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip()
        if key == "interval_s":
            interval = float(value)
        elif key not in types:
            raise ValueError(f"--controller: unknown field {key!r} (fields: {', '.join(types)}, interval_s)")
        elif str(types[key]) in ("int", "<class 'int'>"):
            fields[key] = int(value)
        elif str(types[key]).startswith("bool"):
            fields[key] = value.strip().lower() in ("1", "true", "on", "yes")
        else:
            fields[key] = float(value)
    return ControllerSpec(text, fields, interval)


class Control:
    """The controller's loop in the world: a reading every `interval_s` of simulated time sets the world's limit
    (a higher limit admits queued turns at once; a lower one takes effect as replies end, as AdmissionQueue does)."""

    def __init__(self, world: World, spec: ControllerSpec | str) -> None:
        self.world, self.spec = world, spec if isinstance(spec, ControllerSpec) else parse_controller(spec)
        self.controller = self.spec.build()
        world.max_active = self.controller.limit
        self.trace: list[tuple[float, int, str]] = [(0.0, self.controller.limit, "initial")]
        world.at(self.spec.interval_s, "control")

    def step(self) -> None:
        w = self.world
        s = w.scheduler
        signals = CapacitySignals(
            at=w.clock.t,
            underruns=s.settled_underruns,
            start_underruns=s.underruns - s.settled_underruns,
            near_misses=s.near_misses,
            generated_tokens=w.tokens,
            engine_active=len(w.running) + len(w.waiting),
            active=w.active,
            queued=len(w.queued),
        )
        limit = self.controller.update(signals)
        if limit != w.max_active:
            self.trace.append((round(w.clock.t, 2), limit, self.controller.reason))
            w.max_active = limit
            w.fill()
        if w.active or w.queued or any(kind != "control" for _, _, kind, _ in w.events):
            w.at(w.clock.t + self.spec.interval_s, "control")


def _p(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if values else 0.0


def admission_summary(world: World) -> dict:
    """Offered (429 retries count again), admitted, refused after waiting; queue waits of the admitted; the limit."""
    results = [t.result for t in world.all_turns]
    admitted = [t for t in world.all_turns if t.admitted_at is not None]
    waits = [t.admitted_at - t.sent for t in admitted]
    out = {
        "offered": len(results),
        "admitted": len(admitted),
        "refused": sum(r.status == 429 for r in results),
        "admitted_fraction": round(len(admitted) / max(1, len(results)), 3),
        "queued_fraction": round(sum(w > 1e-9 for w in waits) / max(1, len(waits)), 3),
        "queue_wait_p50_s": _p(waits, 50),
        "queue_wait_p90_s": _p(waits, 90),
        "peak_active": world.peak_active,
    }
    control = world.control
    if control is not None:
        limits = [limit for _, limit, _ in control.trace]
        cuts = [
            (t, before, limit)
            for (_, before, _), (t, limit, reason) in zip(control.trace, control.trace[1:], strict=False)
            if limit < before
        ]
        out |= {
            "limit_min": min(limits),
            "limit_max": max(limits),
            "limit_final": limits[-1],
            "cuts": len(cuts),
            "cut_trace": cuts,
            "knee": control.controller.knee,
        }
    return out


def averaged_admission(runs: list[dict]) -> dict:
    """The mean of each number over seeds; each seed's cuts kept (the limit's path differs between draws)."""
    if not runs or not runs[0]:
        return {}
    out = {}
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = round(sum(r[key] or 0 for r in runs) / len(runs), 2)
        elif key == "cut_trace":
            out["cut_traces"] = [r[key] for r in runs]
        else:
            out[key] = [r[key] for r in runs]
    return out


def admission_line(a: dict) -> str:
    if not a:
        return ""
    line = (
        f"\n    admitted {a['admitted']:.0f} of {a['offered']:.0f} offered ({a['refused']:.0f} refused), "
        f"{a['queued_fraction']:.0%} queued, queue wait p50 {a['queue_wait_p50_s']:.1f} s / p90 "
        f"{a['queue_wait_p90_s']:.1f} s, peak {a['peak_active']:.0f} at once"
    )
    if "limit_final" in a:
        cuts = "; ".join(" ".join(f"{t:g}s:{b}->{n}" for t, b, n in seed) or "-" for seed in a.get("cut_traces", []))
        line += (
            f"\n    limit {a['limit_min']:.0f}-{a['limit_max']:.0f}, final {a['limit_final']:.1f}, "
            f"{a['cuts']:.1f} cuts ({cuts})"
        )
    return line
