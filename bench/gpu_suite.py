"""GPU suite: the product's defaults vs the seed's serving pattern, in one run, on one GPU, at full size.

1. Writes full-size folders once (under --work): GLM-4-Voice-9B's config.json + our tokenizer files (weights come
   from vLLM's `load_format="dummy"`), and random-weight speech tokenizer and decoder folders at the released
   sizes, in the official formats. All weights are random: the figures are speed, not quality.
2. Starts the real server (bench/gpu_server.py = `create_app(settings)` + /bench routes) with the PRODUCT DEFAULTS:
   only the three model paths, `ENGINE__LOAD_FORMAT=dummy` and the cache folder. ready_s = process start ->
   /health/ready 200.
3. Load ladder (--levels): bench/loadgen.py over HTTP (spoken turns: audio in, streamed pcm16 out), judged as a
   listener hears it (bench/playback.py): first audio, playable latency, gaps, answer ratio, tokens/s, errors, plus
   the GPU time split and the admission limit from /bench/stats. A level is real time when every turn succeeded and
   every playable latency <= 1 s (level 1: --lone-turns conversations in a row, so its p50 is a median). The ladder
   stops once a level's playable p50 passes 3 s or 10% of its turns fail.
4. Overload: 2 x the real-time level (at least 2) closed-loop clients for --overload-seconds, starting spread over
   --overload-stagger seconds (8: about one turn, so users arrive at different times; started together, equal turns
   stay in step and the decoder batches them far better than real traffic: 91.5% vs 54% gap-free on an H200,
   bench/results/GPU.md); 429s retry after Retry-After (at most 2 s). Reports offered / admitted / rejected and how
   many admitted turns were gap-free.
5. Baseline: POST /bench/baseline at 1, 2, 3, ... users (bench/baseline_seed.py, the seed's pattern, on the SAME
   engine in the same process) until a level is no longer real time under the same rule, at most --baseline-max.
6. `--variant NAME:SPEECH_DECODER__KEY=VAL[,...]` (repeatable): after the defaults' overload, the same warm server
   runs the defaults and every variant in turn, `--variant-rounds` times in ABBA order, each with a ladder over
   `--variant-levels` and `--variant-overload` staggered sessions (bench/warm_variants.py): same-run comparisons of
   the decoder's per-stream rules without a server start each, reported under `defaults.variants`. Also live:
   admission control's CAPACITY__BACKOFF / INITIAL / SETTLE_S and SPEECH_TOKENIZER__MAX_WAIT_MS.
7. Each `--config NAME:KEY=VAL[,KEY=VAL...]` then gets a fresh server with those settings over the defaults and a
   ladder over --configs-levels (no overload or baseline), reported under `configs`, never instead of the defaults.

$OUT/gpu_suite.json (everything) and $OUT/latest.json (the headline, see the issue) are rewritten after every level,
so a run cut off by its time limit still leaves its results; progress lines carry the time.

On the GPU machine (bench/gpu_run.sh):  bash bench/gpu_run.sh suite [--levels 1,32,128 --config fp8:ENGINE__...]
On a CPU against a running tiny server:  python -m bench.gpu_suite --url http://127.0.0.1:8123 --levels 1,2 ...
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO / "plugins"))

from bench import loadgen
from bench.overload_trace import traced
from bench.playback import LevelSummary, OverloadSummary, TurnResult, level_summary
from bench.suite_results import ConfigRun, ConfigSpec, GpuSplit, ServerStats, SuiteLevel, gpu_name, write_results
from bench.warm_variants import Variant, run_variants

STOP_PLAYABLE_P50_MS = 3000.0
"""A level whose playable p50 is past this ends the ladder: higher levels would only take device time."""
STOP_ERROR_FRACTION = 0.1
_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - _T0:5.0f}s] {message}", flush=True)


def prepare_folders(work: Path) -> dict[str, Path]:
    from bench.gpu_smoke_vllm import write_full_folder
    from glm4voice_api.models.speech_decoder.flow import FlowConfig
    from glm4voice_api.models.speech_decoder.hift import HiFTConfig
    from glm4voice_api.models.speech_tokenizer.encoder import WhisperVQConfig
    from glm4voice_api.random_checkpoints.speech_decoder import write_tiny_speech_decoder
    from glm4voice_api.random_checkpoints.speech_tokenizer import write_tiny_speech_tokenizer

    names = {"llm": "glm-4-voice-9b", "tok": "glm-4-voice-tokenizer", "dec": "glm-4-voice-decoder"}
    paths = {k: work / v for k, v in names.items()}
    done = work / ".complete"
    if not done.exists():
        t0 = time.perf_counter()
        write_full_folder(paths["llm"])
        write_tiny_speech_tokenizer(paths["tok"], config=WhisperVQConfig.full())
        write_tiny_speech_decoder(paths["dec"], flow=FlowConfig.full(), hift=HiFTConfig.full())
        done.write_text("ok")
        log(f"full-size folders written in {time.perf_counter() - t0:.0f} s")
    return paths


def server_env(work: Path, paths: dict[str, Path], spec: ConfigSpec) -> dict[str, str]:
    """The product defaults (model paths, dummy weights, a cache folder) plus the config's own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLM4VOICE_")}  # nothing leaks in from the shell
    env |= {
        "GLM4VOICE_LLM_PATH": str(paths["llm"]),
        "GLM4VOICE_SPEECH_TOKENIZER_PATH": str(paths["tok"]),
        "GLM4VOICE_DECODER_PATH": str(paths["dec"]),
        "GLM4VOICE_ENGINE__LOAD_FORMAT": "dummy",
        "GLM4VOICE_CACHE_DIR": str(work / "cache"),
    }
    env |= {f"GLM4VOICE_{key}": value for key, value in spec.overrides.items()}
    return env


def settings_used(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("GLM4VOICE_") and not k.endswith("_PATH")}


_SERVERS: list[subprocess.Popen] = []


def start_server(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    # Every configuration starts as on a fresh machine: no admission knee remembered from an earlier server of this
    # run (serving/capacity.py: CapacityMemory), which would let a later configuration skip its first overload.
    (Path(env["GLM4VOICE_CACHE_DIR"]) / "capacity.json").unlink(missing_ok=True)
    with log_path.open("w") as server_log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.gpu_server", "--port", str(port)],
            env=env,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    _SERVERS.append(proc)
    return proc


def stop_server(proc: subprocess.Popen | None, wait_s: float = 60) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def _on_sigterm(signum: int, _frame: object) -> None:
    """`timeout` ends the suite with SIGTERM: stop the server too, or it would hold the GPU for the next call."""
    log("SIGTERM: stopping the server; the results written so far stay")
    for proc in _SERVERS:
        stop_server(proc, wait_s=10)
    raise SystemExit(128 + signum)


async def wait_ready(url: str, proc: subprocess.Popen | None, started: float, timeout: float) -> float:
    """Seconds from `started` (the process start) to the first /health/ready 200."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while time.perf_counter() - started < timeout:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
            try:
                if (await client.get("/health/ready")).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"server not ready within {timeout:g} s")


async def server_stats_raw(url: str) -> dict:
    """GET /bench/stats as sent ({} when the server does not answer it)."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            response = await client.get("/bench/stats")
        return response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


async def server_stats(url: str) -> ServerStats:
    return ServerStats.from_json(await server_stats_raw(url))


async def server_passes(url: str, since: list[int]) -> dict:
    """The decoder passes the server ran since `since` (/bench/passes; {} when it has none)."""
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            response = await client.get("/bench/passes", params={"since": ",".join(map(str, since))})
        return response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


async def profile(url: str, route: str, delay_s: float, seconds: float, *, on: bool = True) -> dict:
    """POST a gpu_server profile route (/bench/profile_loop, /bench/profile_gpu) for `seconds` after `delay_s`
    ({} when not `on`, or when the server does not answer it: a profile never fails a level)."""
    if not on:
        return {}
    await asyncio.sleep(delay_s)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=seconds + 60) as client:
            response = await client.post(route, json={"seconds": seconds, "top": 40})
            return response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


def loadgen_args(args: argparse.Namespace, url: str, turns: int | None = None) -> argparse.Namespace:
    return loadgen.parse_args(
        ["--url", url, "--turns", str(turns or args.turns), "--max-tokens", str(args.max_tokens)]
        + ["--lone-turns", str(0 if turns else args.lone_turns)]
        + ["--ramp", str(args.ramp), "--question-seconds", "3", "--timeout", str(args.turn_timeout)]
        + ["--overload-stagger", str(args.overload_stagger)]
    )


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.runs: list[ConfigRun] = []
        self.passes: dict[str, list[dict]] = {}
        """Per configuration, each phase's decoder passes (gpu_passes.json: the data for sim_schedule --fit)."""
        self._pass_counts: list[int] = []
        self.gpu = gpu_name()
        self.wav_b64 = base64.b64encode(loadgen.make_question_wav(3.0)).decode()
        self.settings = {
            "turns": args.turns,
            "max_tokens": args.max_tokens,
            "ramp_s": args.ramp,
            "overload_stagger_s": args.overload_stagger,
            "question_s": 3.0,
            "warmup_levels": args.warmup,
        }

    def write(self) -> None:
        suite = {"settings": self.settings, "elapsed_s": round(time.perf_counter() - _T0, 1), "url": self.args.url}
        write_results(self.out, self.runs, self.gpu, suite)
        if self.passes:
            (self.out / "gpu_passes.json").write_text(json.dumps({"gpu": self.gpu, "configs": self.passes}) + "\n")

    async def record_passes(self, run: ConfigRun, url: str, phase: str) -> None:
        """Keep the passes the server ran since the last call (`PassRecord` fields, one list per scheduler)."""
        got = await server_passes(url, self._pass_counts)
        schedulers = got.get("schedulers") or []
        self._pass_counts = [int(s.get("total", 0)) for s in schedulers]
        self.passes.setdefault(run.name, []).append(
            {"phase": phase, "schedulers": [s.get("passes", []) for s in schedulers]}
        )

    async def run_config(
        self, run: ConfigRun, url: str, levels: list[int], extras: bool, proc: subprocess.Popen | None = None
    ) -> None:
        """Ladder (+ overload and baseline when `extras`) against a server that is ready at `url`."""
        args = self.args
        lg = loadgen_args(args, url, turns=1)
        for c in args.warmup:  # captures the decoder's CUDA graphs for the common buckets
            await loadgen.run_level(url, c, lg, self.wav_b64)
        run.warm_stats = await server_stats(url)
        self._pass_counts = []
        await self.record_passes(run, url, "warm-up")
        log(f"{run.name}: warm-up {args.warmup} done: {run.warm_stats}")
        if extras and args.realtime_levels:
            await self.realtime(url)
        lg = loadgen_args(args, url)
        for concurrency in levels:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            before = await self.stats(url)
            # Profiles meanwhile: the event loop from 2 s in (streams running); the GPU over the burst's first 2 s,
            # where first audio is decided (the LLM's prefills and first steps beside the first decoder passes).
            loop_job = profile(url, "/bench/profile_loop", 2.0, 5.0, on=concurrency == args.profile_loop)
            gpu_job = profile(url, "/bench/profile_gpu", 0.2, 2.0, on=concurrency == args.profile_gpu)
            level, loop_profile, gpu_profile = await asyncio.gather(
                loadgen.run_level(url, concurrency, lg, self.wav_b64), loop_job, gpu_job
            )
            if loop_profile:
                run.loop_profiles[str(concurrency)] = loop_profile
            if gpu_profile:
                run.gpu_profiles[str(concurrency)] = gpu_profile
            after = await self.stats(url)
            await self.record_passes(run, url, f"level {concurrency}")
            summary = level.summary()
            run.levels.append(self.level_record(summary, before, after, level.wall_s))
            self.write()
            log(
                f"{run.name}: {json.dumps(loadgen.progress_line(summary) | {'admission_limit': after.admission_limit})}"
            )
            failed = summary.turns - summary.ok
            if summary.playable_ms.p50 is not None and summary.playable_ms.p50 > STOP_PLAYABLE_P50_MS:
                run.stopped_early = f"playable p50 {summary.playable_ms.p50:.0f} ms at {concurrency} streams"
            elif failed > STOP_ERROR_FRACTION * summary.turns:
                run.stopped_early = f"{failed} of {summary.turns} turns failed at {concurrency} streams"
            if run.stopped_early:
                log(f"{run.name}: ladder stopped: {run.stopped_early}")
                break
        if not extras:
            if args.configs_overload and args.overload_seconds > 0:  # the same overload as the defaults', beside it
                run.overload = await self.overload(run, url, args.configs_overload, lg)
                self.write()
            return
        if args.baseline_max:  # before the overload: short, and the headline needs it if the time limit cuts in
            await self.baseline(run, url)
        if args.overload_seconds > 0:
            run.overload = await self.overload(run, url, max(2, 2 * run.realtime_streams), lg)
            self.write()
        if args.overload_seconds > 0 and args.overload_extra:
            run.overload_extra = await self.overload(run, url, args.overload_extra, lg, label="extra overload")
            self.write()
        if args.variant:  # last: the headline above is complete if the time limit cuts the rounds short
            await run_variants(self, run, url, lg, log)
            self.write()

    async def stats(self, url: str) -> ServerStats:
        return await server_stats(url)

    async def traced_overload(self, run: ConfigRun, url: str, sessions: int, seconds: float, lg, label: str):
        """`loadgen.run_overload` with the server's admission state sampled each second and every turn kept
        (bench/overload_trace.py), under `run.overload_traces[label]`."""
        result, trace = await traced(
            lambda: loadgen.run_overload(url, sessions, seconds, lg, self.wav_b64),
            lambda: server_stats_raw(url),
        )
        run.overload_traces[label] = trace.to_json()
        return result

    @staticmethod
    def level_record(summary: LevelSummary, before: ServerStats, after: ServerStats, wall_s: float) -> SuiteLevel:
        return SuiteLevel(summary, GpuSplit.between(before, after, wall_s), after.admission_limit)

    async def overload(
        self, run: ConfigRun, url: str, sessions: int, lg: argparse.Namespace, label: str = "overload"
    ) -> OverloadSummary:
        log(f"{run.name}: {label}: {sessions} closed-loop sessions for {self.args.overload_seconds:g} s")
        result = await self.traced_overload(run, url, sessions, self.args.overload_seconds, lg, f"{label} {sessions}")
        await self.record_passes(run, url, f"{label} {sessions}")
        o = result.summary()
        log(
            f"{run.name}: {label}: offered {o.offered}, admitted {o.admitted}, 429 {o.rejected_429}, "
            f"other errors {o.errors_other_than_429}, gap-free {o.gap_free_fraction_of_admitted} of admitted"
        )
        return o

    async def realtime(self, url: str) -> None:
        """The Realtime API's voice-to-voice latency on this same server (bench/realtime_bench.py), before the
        ladder so that a run cut off by its time limit still has it; $OUT/realtime.json."""
        from bench import realtime_bench

        rt_args = realtime_bench.parse_args(
            ["--url", url, "--levels", ",".join(map(str, self.args.realtime_levels))]
            + ["--turns", str(self.args.realtime_turns), "--max-output-tokens", str(self.args.realtime_max_tokens)]
        )
        log(f"realtime: levels {self.args.realtime_levels}, {self.args.realtime_turns} turns per session")
        try:
            result = await realtime_bench.run(rt_args)
        except Exception as exc:  # noqa: BLE001 - the suite goes on; the failure is in the log
            log(f"realtime bench failed: {type(exc).__name__}: {exc}")
            return
        result |= {"gpu": self.gpu, "date": time.strftime("%Y-%m-%d"), "defaults": True, "server": "product defaults"}
        (self.out / "realtime.json").write_text(json.dumps(result, indent=2) + "\n")
        for level in result["levels"]:
            log(f"realtime: {level['concurrency']} sessions: voice-to-voice {level['voice_to_voice_ms']}")

    async def baseline(self, run: ConfigRun, url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=self.args.turn_timeout * self.args.baseline_max) as client:
            for concurrency in range(1, self.args.baseline_max + 1):
                start = time.perf_counter()
                body = {"concurrency": concurrency, "max_tokens": self.args.max_tokens, "question_seconds": 3}
                response = await client.post("/bench/baseline", json=body)
                if response.status_code != 200:
                    log(f"baseline failed: {response.status_code} {response.text[:300]}")
                    break
                turns = [
                    TurnResult(
                        session=i,
                        status=200,
                        error=t.get("error"),
                        completion_tokens=int(t.get("tokens") or 0),
                        arrivals=[(float(a), float(d)) for a, d in t.get("arrivals") or []],
                    )
                    for i, t in enumerate(response.json()["turns"])
                ]
                summary = level_summary(concurrency, turns, time.perf_counter() - start)
                run.baseline.append(summary)
                self.write()
                log(f"{run.name}: baseline {json.dumps(loadgen.progress_line(summary))}")
                if not summary.realtime:
                    break

    async def start_and_run(self, spec: ConfigSpec, paths: dict[str, Path], port: int, levels: list[int]) -> None:
        env = server_env(Path(self.args.work), paths, spec)
        run = ConfigRun(name=spec.name, settings=settings_used(env), defaults=not spec.overrides)
        self.runs.append(run)
        url = f"http://127.0.0.1:{port}"
        log(
            f"{spec.name}: starting the server ({json.dumps(spec.overrides) if spec.overrides else 'product defaults'})"
        )
        started = time.perf_counter()
        proc = start_server(port, env, self.out / f"server_{spec.name}.log")
        try:
            run.ready_s = round(await wait_ready(url, proc, started, self.args.ready_timeout), 1)
            log(f"{spec.name}: ready in {run.ready_s:.1f} s")
            self.write()
            await self.run_config(run, url, levels, extras=not spec.overrides, proc=proc)
        except (RuntimeError, TimeoutError, httpx.HTTPError) as exc:
            run.error = f"{type(exc).__name__}: {exc}"[:300]
            log(f"{spec.name}: {run.error} (see server_{spec.name}.log)")
        except (SystemExit, asyncio.CancelledError):
            run.error = "interrupted (SIGTERM: the time limit)"
            raise
        finally:
            stop_server(proc)
            self.write()


async def main_async(args: argparse.Namespace) -> dict:
    suite = Suite(args)
    log(f"GPU suite on {suite.gpu}: levels {args.levels}, configs {[c.name for c in args.config]}")
    if args.url:  # an already running bench/gpu_server.py (a CPU check of this script)
        run = ConfigRun(name="url", settings={}, defaults=False)
        suite.runs.append(run)
        started = time.perf_counter()
        run.ready_s = round(await wait_ready(args.url, None, started, args.ready_timeout), 1)
        await suite.run_config(run, args.url, args.levels, extras=True)
    else:
        paths = prepare_folders(Path(args.work))
        if args.prepare_only:
            return {}
        await suite.start_and_run(ConfigSpec("defaults"), paths, args.port, args.levels)
        for i, spec in enumerate(args.config, start=1):
            await suite.start_and_run(spec, paths, args.port + i, args.configs_levels or args.levels)
    suite.write()
    latest = json.loads((suite.out / "latest.json").read_text())
    log("latest.json:\n" + json.dumps({k: v for k, v in latest.items() if k != "definitions"}, indent=2))
    return latest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    p.add_argument("--work", default="/tmp/g4v_full")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--levels", type=ints, default=[1, 16, 32, 64, 96, 128, 160, 192, 256])
    p.add_argument("--warmup", type=ints, default=[1, 16, 64], help="levels run before measuring ('' for none)")
    p.add_argument("--turns", type=int, default=1)
    p.add_argument("--lone-turns", type=int, default=5, help="level 1: one-turn conversations in a row (p50 of them)")
    p.add_argument("--max-tokens", type=int, default=390, help="390 = 10 x (13 text + 26 audio) = 20.8 s of speech")
    p.add_argument("--ramp", type=float, default=1.0, help="streams start uniformly within this many seconds")
    p.add_argument("--turn-timeout", type=float, default=240.0)
    p.add_argument("--overload-seconds", type=float, default=60.0, help="0: no overload run")
    p.add_argument("--overload-extra", type=int, default=0, help="also offer this many sessions (beside 2 x real time)")
    p.add_argument(
        "--realtime-levels", type=ints, default=[], help="Realtime sessions per level on the defaults ('': none)"
    )
    p.add_argument("--realtime-turns", type=int, default=2)
    p.add_argument("--realtime-max-tokens", type=int, default=195)
    p.add_argument("--baseline-max", type=int, default=8, help="most users of the baseline ladder (0: none)")
    p.add_argument(
        "--config",
        type=ConfigSpec.parse_server,
        action="append",
        default=[],
        metavar="NAME:KEY=VAL[,KEY=VAL...]",
        help="an extra configuration beside the defaults (fresh server; KEY as in GLM4VOICE_KEY); repeatable",
    )
    p.add_argument("--configs-levels", type=ints, default=None, help="ladder of the --config runs (default --levels)")
    p.add_argument(
        "--overload-stagger",
        type=float,
        default=8.0,
        help="overload sessions start uniformly within this many seconds (about one turn; the --ramp value: in step)",
    )
    p.add_argument(
        "--configs-overload", type=int, default=0, help="the --config runs also get an overload of this many sessions"
    )
    p.add_argument(
        "--variant",
        type=Variant.parse,
        action="append",
        default=[],
        metavar="NAME:SPEECH_DECODER__KEY=VAL[,...]",
        help="decoder rules (or CAPACITY__BACKOFF / INITIAL / SETTLE_S: admission control; SPEECH_TOKENIZER__MAX_WAIT_MS) "
        "to compare with the defaults on the same warm server, in rounds (repeatable)",
    )
    p.add_argument("--variant-rounds", type=int, default=2, help="rounds of the defaults + every --variant (ABBA)")
    p.add_argument("--variant-levels", type=ints, default=[32], help="ladder of each variant phase ('': none)")
    p.add_argument("--variant-overload", type=int, default=32, help="closed-loop sessions per variant phase (0: none)")
    p.add_argument("--variant-overload-seconds", type=float, default=40.0)
    p.add_argument(
        "--profile-loop", type=int, default=32, help="ladder level whose event loop is profiled for 5 s (0: none)"
    )
    p.add_argument(
        "--profile-gpu", type=int, default=0, help="ladder level whose first 2 s of GPU work are profiled (0: none)"
    )
    p.add_argument("--ready-timeout", type=float, default=420)
    p.add_argument("--prepare-only", action="store_true")
    p.add_argument("--url", default=None, help="use a running bench/gpu_server.py instead of starting one")
    return p.parse_args(argv)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_sigterm)
    asyncio.run(main_async(parse_args()))
