"""Several decoder configurations on one warm server, taken in turn: the GPU suite's same-run comparisons.

Why: a fresh server per configuration (`--config`) costs 60-90 s of scarce device time before it measures
anything, and the host's run-to-run spread is larger than most differences worth finding (at 16 streams four runs
of nearly the same code gave playable p50 726-1000 ms, README). Here every configuration runs on the SAME server,
GPU and warm caches, in rounds: round 1 takes them in order (the product defaults first), round 2 in reverse, and
so on (ABBA), so a drift of the machine during the run falls on every configuration alike.

A phase is: `POST /bench/reconfigure` (bench/gpu_server.py: the decoder's per-stream rules become the server's own
settings plus the variant's, and admission control starts again from its initial state, as a new server's would),
then a ladder over `--variant-levels`, then `--variant-overload` closed-loop sessions for
`--variant-overload-seconds`, started over the suite's `--overload-stagger`. Only the per-stream rules can vary
(chunking, schedule, context, hold, pass bound, preemption, ODE steps: `pipeline/decoder_rules.py`); the engine's
settings, dtype and batch size need a fresh server (`--config`).

gpu_suite.json keeps every phase (`defaults.variants.phases`) and, per variant, its turns pooled over the rounds
(`defaults.variants.pooled`: the same summaries as the ladder and the overload, plus each round's figure beside
them, so the spread between rounds is in view).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import httpx

from bench import loadgen
from bench.playback import OverloadSummary, TurnResult, level_summary, overload_summary
from bench.suite_results import ConfigRun, ConfigSpec, SuiteLevel

if TYPE_CHECKING:
    from bench.gpu_suite import Suite

DEFAULTS = "defaults"
_PREFIX = "SPEECH_DECODER__"
_CAPACITY = "CAPACITY__"
"""Admission control's own rules (bench/gpu_server.py: CAPACITY_RULES), e.g. CAPACITY__BACKOFF=0.8."""
_TOKENIZER = "SPEECH_TOKENIZER__"
"""The speech tokenizer worker's batching wait: SPEECH_TOKENIZER__MAX_WAIT_MS=5."""
_SWITCH = "SWITCH_INTERVAL_MS"
"""Python's thread switch interval of the server process (how long the decoder thread can wait for the GIL)."""
_GROUPS = {"capacity__": "capacity", "speech_tokenizer__": "speech_tokenizer", "switch_interval_ms": "process"}
"""Rule key prefix -> the /bench/reconfigure section it goes to (the rest: speech_decoder)."""


@dataclass(frozen=True)
class Variant:
    """A name and the decoder rules it changes (none: the server's own settings, i.e. the product defaults); rules
    of admission control are kept as `capacity__KEY`."""

    name: str
    rules: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Variant:
        """`NAME:SPEECH_DECODER__KEY=VAL[,...]` (or `CAPACITY__KEY`), the `--config` syntax restricted to what
        changes on a running server."""
        spec = ConfigSpec.parse(text)
        if spec.name == DEFAULTS:
            raise ValueError(f"--variant {text!r}: {DEFAULTS!r} is always run; pick another name")
        if bad := [k for k in spec.overrides if not k.startswith((_PREFIX, _CAPACITY, _TOKENIZER)) and k != _SWITCH]:
            raise ValueError(
                f"--variant {text!r}: only {_PREFIX}*, {_CAPACITY}*, {_TOKENIZER}MAX_WAIT_MS and {_SWITCH} change on a "
                f"running server, not {bad}"
            )
        return cls(spec.name, {k.removeprefix(_PREFIX).lower(): v for k, v in spec.overrides.items()})


def round_order(variants: list[Variant], index: int) -> list[Variant]:
    """Round `index` (0-based): the defaults and the variants, reversed on every other round (ABBA)."""
    names = [Variant(DEFAULTS), *variants]
    return names if index % 2 == 0 else names[::-1]


@dataclass
class Phase:
    variant: str
    round: int
    rules: dict = field(default_factory=dict)
    """The decoder rules the server applied (every rule, not only the changed ones)."""
    levels: list[SuiteLevel] = field(default_factory=list)
    overload: OverloadSummary | None = None
    error: str | None = None

    def to_json(self) -> dict:
        return {
            "variant": self.variant,
            "round": self.round,
            "rules": self.rules,
            "levels": [lv.to_json() for lv in self.levels],
            "overload": asdict(self.overload) if self.overload else None,
            "error": self.error,
        }


@dataclass
class VariantRuns:
    """Every phase, plus each variant's raw turns per level and overload (pooled over the rounds)."""

    phases: list[Phase] = field(default_factory=list)
    _levels: dict[tuple[str, int], list[tuple[list[TurnResult], float]]] = field(default_factory=dict)
    _overloads: dict[str, list[tuple[int, float, list[TurnResult], float]]] = field(default_factory=dict)

    def add_level(self, variant: str, concurrency: int, turns: list[TurnResult], wall_s: float) -> None:
        self._levels.setdefault((variant, concurrency), []).append((turns, wall_s))

    def add_overload(self, variant: str, sessions: int, seconds: float, turns: list[TurnResult], wall_s: float) -> None:
        self._overloads.setdefault(variant, []).append((sessions, seconds, turns, wall_s))

    def pooled(self) -> dict:
        out: dict[str, dict] = {}
        for (variant, concurrency), runs in sorted(self._levels.items()):
            summary = level_summary(concurrency, [t for turns, _ in runs for t in turns], sum(w for _, w in runs))
            by_round = [level_summary(concurrency, turns, wall) for turns, wall in runs]
            entry = asdict(summary) | {
                "playable_p50_ms_by_round": [s.playable_ms.p50 for s in by_round],
                "playable_p99_ms_by_round": [s.playable_ms.p99 for s in by_round],
                "realtime_by_round": [s.realtime for s in by_round],
            }
            out.setdefault(variant, {"levels": [], "overload": None})["levels"].append(entry)
        for variant, runs in self._overloads.items():
            turns = [t for _, _, ts, _ in runs for t in ts]
            summary = overload_summary(runs[0][0], sum(r[1] for r in runs), turns, sum(r[3] for r in runs))
            by_round = [overload_summary(s, sec, ts, w) for s, sec, ts, w in runs]
            out.setdefault(variant, {"levels": [], "overload": None})["overload"] = asdict(summary) | {
                "gap_free_fraction_by_round": [o.gap_free_fraction_of_admitted for o in by_round],
                "admitted_by_round": [o.admitted for o in by_round],
            }
        return out

    def to_json(self) -> dict:
        return {"phases": [p.to_json() for p in self.phases], "pooled": self.pooled()}


def reconfigure_body(rules: dict[str, str]) -> dict:
    """A variant's rules as /bench/reconfigure takes them: the decoder's, admission control's (`capacity__KEY`),
    the tokenizer worker's (`speech_tokenizer__KEY`) and the process's (`switch_interval_ms`)."""
    body: dict = {"speech_decoder": {}, **{section: {} for section in _GROUPS.values()}}
    for key, value in rules.items():
        prefix = next((p for p in _GROUPS if key.startswith(p)), None)
        section = _GROUPS[prefix] if prefix else "speech_decoder"
        body[section][key if section == "process" else key.removeprefix(prefix or "")] = value
    return body


async def reconfigure(url: str, rules: dict[str, str], wait_s: float = 120.0) -> dict:
    """POST /bench/reconfigure, retried while streams of the previous phase are still closing (409)."""
    deadline = time.monotonic() + wait_s
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while True:
            response = await client.post("/bench/reconfigure", json=reconfigure_body(rules))
            if response.status_code == 200:
                return response.json()
            if response.status_code != 409 or time.monotonic() > deadline:
                raise RuntimeError(f"/bench/reconfigure {rules}: {response.status_code} {response.text[:300]}")
            await asyncio.sleep(0.5)


async def run_variants(
    suite: Suite, run: ConfigRun, url: str, lg: argparse.Namespace, log: Callable[[str], None]
) -> VariantRuns:
    """The rounds of `suite.args.variant` against the server at `url`; kept on `run.variants` as they go."""
    args = suite.args
    runs = VariantRuns()
    run.variants = runs
    for index in range(args.variant_rounds):
        for variant in round_order(args.variant, index):
            phase = Phase(variant.name, index + 1)
            runs.phases.append(phase)
            try:
                applied = await reconfigure(url, variant.rules)
                phase.rules = dict(applied["speech_decoder"])
                for prefix, section in _GROUPS.items():
                    phase.rules |= {
                        k if section == "process" else f"{prefix}{k}": v
                        for k, v in (applied.get(section) or {}).items()
                    }
                log(f"variant {variant.name}, round {index + 1}: {json.dumps(variant.rules) or 'product defaults'}")
                for concurrency in args.variant_levels:
                    before = await suite.stats(url)
                    level = await loadgen.run_level(url, concurrency, lg, suite.wav_b64)
                    after = await suite.stats(url)
                    await suite.record_passes(run, url, f"{variant.name} round {index + 1} level {concurrency}")
                    runs.add_level(variant.name, concurrency, level.turns, level.wall_s)
                    summary = level.summary()
                    phase.levels.append(suite.level_record(summary, before, after, level.wall_s))
                    log(f"variant {variant.name}: {json.dumps(loadgen.progress_line(summary))}")
                if args.variant_overload and args.variant_overload_seconds > 0:
                    sessions, seconds = args.variant_overload, args.variant_overload_seconds
                    label = f"{variant.name} round {index + 1} overload {sessions}"
                    result = await suite.traced_overload(run, url, sessions, seconds, lg, label)
                    await suite.record_passes(run, url, label)
                    runs.add_overload(variant.name, sessions, seconds, result.turns, result.wall_s)
                    phase.overload = o = result.summary()
                    log(
                        f"variant {variant.name}: overload {sessions}: admitted {o.admitted} of {o.offered}, "
                        f"gap-free {o.gap_free_fraction_of_admitted}"
                    )
            except (RuntimeError, httpx.HTTPError) as exc:
                phase.error = f"{type(exc).__name__}: {exc}"[:300]
                log(f"variant {variant.name}: {phase.error}")
            suite.write()
    await reconfigure(url, {})  # the server's own settings again
    return runs


def comparison_table(variants: dict) -> str:
    """A markdown table of `defaults.variants` (gpu_suite.json): per variant, the pooled figures, each round's in
    brackets, and whether it beat the defaults in every round (the bar for a new default: one round can be noise)."""
    pooled = variants.get("pooled") or {}
    base = pooled.get(DEFAULTS) or {}
    base_gf = (base.get("overload") or {}).get("gap_free_fraction_by_round") or []
    levels = sorted({lv["concurrency"] for v in pooled.values() for lv in v["levels"]})
    head = ["variant", "rules"] + [f"{c} streams: playable p50 / p99 ms (p99 by round)" for c in levels]
    head += ["overload: gap-free of admitted (by round)", "beats the defaults in every round"]
    rules = {p["variant"]: p["rules"] for p in variants.get("phases", []) if p.get("rules")}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in sorted(pooled.items(), key=lambda kv: (kv[0] != DEFAULTS, kv[0])):
        cells = [name, _changed(rules.get(name, {}), rules.get(DEFAULTS, {}))]
        for c in levels:
            lv = next((x for x in v["levels"] if x["concurrency"] == c), None)
            cells.append(
                "-"
                if lv is None
                else f"{lv['playable_ms']['p50']} / {lv['playable_ms']['p99']} ({lv['playable_p99_ms_by_round']})"
            )
        o = v.get("overload") or {}
        by_round = o.get("gap_free_fraction_by_round") or []
        cells.append(f"{o.get('gap_free_fraction_of_admitted')} ({by_round})" if o else "-")
        wins = name != DEFAULTS and len(by_round) == len(base_gf) > 0
        wins = wins and all((a or 0) > (b or 0) for a, b in zip(by_round, base_gf, strict=True))
        cells.append("-" if name == DEFAULTS else ("yes" if wins else "no"))
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _changed(rules: dict, defaults: dict) -> str:
    diff = {k: v for k, v in rules.items() if defaults.get(k) != v}
    return ", ".join(f"{k}={v}" for k, v in diff.items()) or "product defaults"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="The warm-server variants of a gpu_suite.json, as a markdown table.")
    p.add_argument("suite", help="gpu_suite.json")
    args = p.parse_args(argv)
    with open(args.suite) as f:
        variants = (json.load(f).get("defaults") or {}).get("variants")
    print(comparison_table(variants) if variants else "no --variant rounds in this file")


if __name__ == "__main__":
    main()
