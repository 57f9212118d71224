"""The GPU suite's records and its two result files: gpu_suite.json (everything) and latest.json (the headline).

bench/gpu_suite.py fills one `ConfigRun` per server it starts (the product defaults first, then each `--config`)
and calls `write_results` after every level, so a run cut off by its time limit still leaves what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.playback import DEFINITIONS, LevelSummary, OverloadSummary
from glm4voice_api.settings_tree import unknown_env_names

WEIGHTS = "random (vLLM load_format=dummy; random-weight speech tokenizer and decoder at the released sizes)"
REALTIME_STREAMS = "the largest tested level that is real time with every smaller tested level real time too (0: none)"


@dataclass(frozen=True)
class ConfigSpec:
    """A server configuration: a name and GLM4VOICE_* settings over the product defaults (none: the defaults)."""

    name: str
    overrides: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> ConfigSpec:
        """`NAME:KEY=VAL[,KEY=VAL...]`; KEY without the GLM4VOICE_ prefix (SPEECH_DECODER__MAX_BATCH); a value may
        hold commas (SPEECH_DECODER__SCHEDULE=[10,20,40]) as long as what follows a comma is not `KEY=`."""
        name, sep, body = text.partition(":")
        if not sep or not name or not body:
            raise ValueError(f"--config {text!r}: expected NAME:KEY=VAL[,KEY=VAL...]")
        overrides = {}
        for item in re.split(r",(?=[A-Za-z_][A-Za-z0-9_]*=)", body):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ValueError(f"--config {text!r}: {item!r} is not KEY=VAL")
            overrides[key.upper().removeprefix("GLM4VOICE_")] = value
        return cls(name, overrides)

    @classmethod
    def parse_server(cls, text: str) -> ConfigSpec:
        """A `--config`: `parse`, and every key a server setting. The server ignores what is none (with a warning in
        its log), so such a configuration would measure the defaults under another name, as
        `probe10:CAPACITY__PROBE_S=10` did in session 28 (admission's rules are `--variant`'s, on a running server)."""
        spec = cls.parse(text)
        if unknown := unknown_env_names({f"GLM4VOICE_{key}": "" for key in spec.overrides}):
            names = ", ".join(name.removeprefix("GLM4VOICE_") for name in unknown)
            # ArgumentTypeError (a ValueError's reason argparse would hide): the caller is --config's parser
            raise argparse.ArgumentTypeError(f"{text!r}: not server settings: {names} (CAPACITY__* rules: --variant)")
        return spec


@dataclass(frozen=True)
class ServerStats:
    """GET /bench/stats (bench/gpu_server.py); a figure the server does not have is None."""

    llm_busy_s: float | None = None
    decoder_busy_s: float | None = None
    tokenizer_busy_s: float | None = None
    decoder_batches: int | None = None
    decoder_chunks: int | None = None
    graph_captures: int | None = None
    graph_capture_s: float | None = None
    admission_limit: int | None = None
    decoder_underruns: int | None = None
    llm_generated_tokens: int | None = None
    first_chunks: int | None = None
    first_supply_s: float | None = None
    first_wait_s: float | None = None
    first_pass_s: float | None = None
    first_audio_server_s: float | None = None
    """Sum over responses of request received -> first audio bytes sent (the server's own first audio)."""
    first_audio_server_n: int | None = None
    reply_start_s: float | None = None
    """Sum over requests of request received -> reply generation starting (admission wait, input audio, prompt)."""
    reply_start_n: int | None = None
    audio_prepare_s: float | None = None
    """Sum over input audio parts of decoding + the speech tokenizer."""
    audio_prepare_n: int | None = None
    thread_cpu_s: dict | None = None
    """CPU seconds of the server's threads by role (main = the event loop, decoder, engine, tokenizer, other)."""
    gc_pause_s: float | None = None
    gc_long_pauses: int | None = None

    @classmethod
    def from_json(cls, data: dict) -> ServerStats:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class GpuSplit:
    """Busy seconds of each GPU component over one level, and as a fraction of its wall time (they overlap)."""

    llm_busy_s: float | None = None
    llm_busy_fraction: float | None = None
    decoder_busy_s: float | None = None
    decoder_busy_fraction: float | None = None
    tokenizer_busy_s: float | None = None
    tokenizer_busy_fraction: float | None = None
    decoder_mean_batch: float | None = None
    decoder_chunks: int | None = None
    decoder_underruns: int | None = None
    """Chunks the server emitted after the listener's audio had run out (its own view of gaps)."""
    llm_tokens_per_s: float | None = None
    graph_captures: int | None = None
    first_audio_split_ms: dict | None = None
    """Server side, mean per stream: supply (stream opened -> its first chunk's tokens all there: prefill and LLM
    steps), wait (-> its pass began), pass (-> audio out of the decoder)."""
    thread_cpu_fraction: dict | None = None
    """Per thread role, CPU seconds over the level's wall time (1.0 = a core all the time): the GIL's contenders."""
    gc_pause_s: float | None = None
    """Seconds inside the cyclic garbage collector over the level (the whole process waited meanwhile)."""
    gc_long_pauses: int | None = None
    """Collections of 50 ms or longer over the level."""

    @classmethod
    def between(cls, before: ServerStats, after: ServerStats, wall_s: float) -> GpuSplit:
        def delta(name: str) -> float | None:
            a, b = getattr(before, name), getattr(after, name)
            return None if a is None or b is None else b - a

        def busy(name: str) -> tuple[float | None, float | None]:
            d = delta(name)
            return (None, None) if d is None else (round(d, 2), round(d / wall_s, 3) if wall_s > 0 else None)

        llm, dec, tok = busy("llm_busy_s"), busy("decoder_busy_s"), busy("tokenizer_busy_s")
        chunks, batches = delta("decoder_chunks"), delta("decoder_batches")
        captures = delta("graph_captures")
        underruns, generated = delta("decoder_underruns"), delta("llm_generated_tokens")
        firsts = delta("first_chunks")
        split = None
        if firsts:
            parts = {k: delta(f"first_{k}_s") for k in ("supply", "wait", "pass")}
            split = {k: round(1000 * v / firsts, 1) for k, v in parts.items() if v is not None}
            served, answered = delta("first_audio_server_s"), delta("first_audio_server_n")
            if served is not None and answered and len(split) == 3:
                # The rest of the server's first audio: before the decoder stream opens (audio decoding, the
                # speech tokenizer, the prompt) plus delivery after the first pass.
                split["server"] = round(1000 * served / answered, 1)
                split["outside"] = round(split["server"] - sum(split[k] for k in ("supply", "wait", "pass")), 1)
            # Of `outside`: the time before the reply starts, and of that the input audio (mean per part).
            for key, name in (("start", "reply_start"), ("audio_in", "audio_prepare")):
                total, count = delta(f"{name}_s"), delta(f"{name}_n")
                if total is not None and count:
                    split[key] = round(1000 * total / count, 1)
        cpu = None
        if before.thread_cpu_s is not None and after.thread_cpu_s is not None and wall_s > 0:
            cpu = {
                role: round((seconds - before.thread_cpu_s.get(role, 0.0)) / wall_s, 3)
                for role, seconds in sorted(after.thread_cpu_s.items())
            }
        gc_s, gc_long = delta("gc_pause_s"), delta("gc_long_pauses")
        return cls(
            thread_cpu_fraction=cpu,
            gc_pause_s=round(gc_s, 3) if gc_s is not None else None,
            gc_long_pauses=int(gc_long) if gc_long is not None else None,
            llm_busy_s=llm[0],
            llm_busy_fraction=llm[1],
            decoder_busy_s=dec[0],
            decoder_busy_fraction=dec[1],
            tokenizer_busy_s=tok[0],
            tokenizer_busy_fraction=tok[1],
            decoder_mean_batch=round(chunks / batches, 2) if chunks is not None and batches else None,
            decoder_chunks=int(chunks) if chunks is not None else None,
            decoder_underruns=int(underruns) if underruns is not None else None,
            llm_tokens_per_s=round(generated / wall_s, 1) if generated is not None and wall_s > 0 else None,
            graph_captures=int(captures) if captures is not None else None,
            first_audio_split_ms=split,
        )


@dataclass(frozen=True)
class SuiteLevel:
    summary: LevelSummary
    gpu_split: GpuSplit | None = None
    admission_limit: int | None = None

    def to_json(self) -> dict:
        out = asdict(self.summary)
        if self.gpu_split is not None:
            out["gpu_split"] = asdict(self.gpu_split)
        out["admission_limit"] = self.admission_limit
        return out


@dataclass
class ConfigRun:
    """One server, started fresh: its settings, readiness, load ladder, overload run and baseline ladder."""

    name: str
    settings: dict[str, str]
    """Every GLM4VOICE_* setting the server was started with (model paths left out)."""
    defaults: bool
    """True when the server got nothing but the model paths, the dummy load format and the cache folder."""
    ready_s: float | None = None
    warm_stats: ServerStats | None = None
    levels: list[SuiteLevel] = field(default_factory=list)
    stopped_early: str | None = None
    overload: OverloadSummary | None = None
    overload_extra: OverloadSummary | None = None
    """A second overload run at a fixed number of sessions (--overload-extra), beside the rule's 2 x real time."""
    baseline: list[LevelSummary] = field(default_factory=list)
    error: str | None = None
    variants: Any = None
    """The warm server's rounds of --variant (bench/warm_variants.py: VariantRuns), None when there were none."""
    overload_traces: dict = field(default_factory=dict)
    """Each overload's admission timeline and turns (bench/overload_trace.py), by its label."""
    loop_profiles: dict = field(default_factory=dict)
    """The event loop's cProfile during a ladder level (gpu_server's /bench/profile_loop), by the level's streams."""
    gpu_profiles: dict = field(default_factory=dict)
    """The model process's kernels by CUDA stream over a level's first 2 s (/bench/profile_gpu), by its streams."""

    def level(self, concurrency: int) -> LevelSummary | None:
        return next((lv.summary for lv in self.levels if lv.summary.concurrency == concurrency), None)

    @property
    def realtime_streams(self) -> int:
        return realtime_streams([lv.summary for lv in self.levels])

    @property
    def baseline_realtime_streams(self) -> int:
        return realtime_streams(self.baseline)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "settings": self.settings,
            "defaults": self.defaults,
            "ready_s": self.ready_s,
            "realtime_streams": self.realtime_streams,
            "levels": [lv.to_json() for lv in self.levels],
            "stopped_early": self.stopped_early,
            "overload": asdict(self.overload) if self.overload else None,
            "overload_extra": asdict(self.overload_extra) if self.overload_extra else None,
            "baseline": [asdict(lv) for lv in self.baseline],
            "baseline_realtime_streams": self.baseline_realtime_streams,
            "warm_stats": asdict(self.warm_stats) if self.warm_stats else None,
            "variants": self.variants.to_json() if self.variants is not None else None,
            "overload_traces": self.overload_traces,
            "loop_profiles": self.loop_profiles,
            "gpu_profiles": self.gpu_profiles,
            "error": self.error,
        }


def realtime_streams(levels: list[LevelSummary]) -> int:
    best = 0
    for lv in sorted(levels, key=lambda lv: lv.concurrency):
        if not lv.realtime:
            break
        best = lv.concurrency
    return best


def gpu_name() -> str:
    if not shutil.which("nvidia-smi"):
        return "unknown (no nvidia-smi)"
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=False
    )
    names = out.stdout.strip().splitlines()
    return names[0] if names else "unknown"


def latest_json(run: ConfigRun, gpu: str, extra_settings: dict) -> dict:
    """The headline of the product-defaults run (bench/results/latest.json)."""
    at32, at1 = run.level(32), run.level(1)
    overload = None
    if run.overload is not None:
        o = run.overload
        overload = {
            "sessions": o.sessions,
            "seconds": o.seconds,
            "offered": o.offered,
            "admitted": o.admitted,
            "rejected_429": o.rejected_429,
            "gap_free_fraction_of_admitted": o.gap_free_fraction_of_admitted,
            "strict_realtime_fraction_of_admitted": o.strict_realtime_fraction_of_admitted,
            "errors_other_than_429": o.errors_other_than_429,
        }
    return {
        "gpu": gpu,
        "date": dt.date.today().isoformat(),
        "defaults": run.defaults,
        "ready_s": round(run.ready_s, 1) if run.ready_s is not None else None,
        "realtime_streams": run.realtime_streams,
        "playable_p50_ms_at_32": at32.playable_ms.p50 if at32 else None,
        "playable_p99_ms_at_32": at32.playable_ms.p99 if at32 else None,
        "ttfa_p50_ms_at_1": at1.first_audio_ms.p50 if at1 else None,
        "baseline_realtime_streams": run.baseline_realtime_streams,
        "overload": overload,
        "definitions": DEFINITIONS | {"realtime_streams": REALTIME_STREAMS, "weights": WEIGHTS},
        "settings": run.settings | extra_settings,
    }


def write_results(out: Path, runs: list[ConfigRun], gpu: str, suite: dict) -> dict:
    """gpu_suite.json (every run) and latest.json (the first run: the product defaults) under `out`."""
    latest = latest_json(runs[0], gpu, suite["settings"]) if runs else {}
    full = {
        "latest": latest,
        "definitions": latest.get("definitions", DEFINITIONS),
        "defaults": runs[0].to_json() if runs else None,
        "configs": [run.to_json() for run in runs[1:]],
        "suite": suite,
    }
    for name, data in (("gpu_suite.json", full), ("latest.json", latest)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(out / name)  # a reader (or a timeout) never sees half a file
    return full
