"""GPU suite: our serving path vs the seed's serving pattern, in one run, on one GPU, at full size.

1. Writes full-size folders once (under --work): GLM-4-Voice-9B's config.json + our tokenizer files (weights come
   from vLLM's `load_format="dummy"`), and random-weight speech tokenizer and decoder folders at the released
   sizes, in the official formats. All weights are random: the figures are speed, not quality.
2. Starts the real server (bench/gpu_server.py = `create_app(settings)` + /bench routes) as a subprocess.
3. OUR PATH: bench/loadgen.py over HTTP at each concurrency in --levels (spoken turns: audio in, streamed audio
   out), recording first-audio latency, per-turn real-time factor, tokens/s and errors, plus the busy seconds of
   LLM, decoder and speech tokenizer per level (the GPU time split).
4. BASELINE: POST /bench/baseline at 1, 2, 3, ... concurrent users until a level is no longer real time
   (bench/baseline_seed.py: one request at a time, decoder re-run over the whole history with the
   25/50/100/150/200 schedule, no batching, fp32 eager) on the SAME engine in the same process.
5. Writes $OUT/gpu_suite.json (everything) and $OUT/latest.json (the headline figures, see the issue).

On the GPU machine (see ../shared/gpu/README.md and bench/gpu_run.sh):  bash bench/gpu_run.sh suite
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO / "plugins"))

from bench import loadgen


def prepare_folders(work: Path) -> dict[str, Path]:
    from bench.gpu_smoke_vllm import write_full_folder
    from glm4voice_api.models.speech_decoder.flow import FlowConfig
    from glm4voice_api.models.speech_decoder.hift import HiFTConfig
    from glm4voice_api.models.speech_tokenizer.encoder import WhisperVQConfig
    from glm4voice_api.random_checkpoints.speech_decoder import write_tiny_speech_decoder
    from glm4voice_api.random_checkpoints.speech_tokenizer import write_tiny_speech_tokenizer

    paths = {
        k: work / v
        for k, v in {"llm": "glm-4-voice-9b", "tok": "glm-4-voice-tokenizer", "dec": "glm-4-voice-decoder"}.items()
    }
    done = work / ".complete"
    if not done.exists():
        t0 = time.perf_counter()
        write_full_folder(paths["llm"])
        write_tiny_speech_tokenizer(paths["tok"], config=WhisperVQConfig.full())
        write_tiny_speech_decoder(paths["dec"], flow=FlowConfig.full(), hift=HiFTConfig.full())
        done.write_text("ok")
        print(f"full-size folders written in {time.perf_counter() - t0:.0f} s", flush=True)
    return paths


def server_env(args: argparse.Namespace, paths: dict[str, Path]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "GLM4VOICE_LLM_PATH": str(paths["llm"]),
            "GLM4VOICE_SPEECH_TOKENIZER_PATH": str(paths["tok"]),
            "GLM4VOICE_DECODER_PATH": str(paths["dec"]),
            "GLM4VOICE_CACHE_DIR": str(Path(args.work) / "cache"),
            "GLM4VOICE_ENGINE__LOAD_FORMAT": "dummy",
            "GLM4VOICE_ENGINE__MAX_NUM_SEQS": str(args.max_num_seqs),
            "GLM4VOICE_ENGINE__MAX_MODEL_LEN": "4096",
            "GLM4VOICE_ENGINE__GPU_MEMORY_UTILIZATION": str(args.gpu_memory_utilization),
            "GLM4VOICE_SPEECH_DECODER__DTYPE": args.decoder_dtype,
            "GLM4VOICE_SPEECH_TOKENIZER__DTYPE": "bfloat16",
            "GLM4VOICE_SPEECH_DECODER__MAX_BATCH": str(args.decoder_max_batch),
            "GLM4VOICE_SPEECH_DECODER__CUDA_GRAPHS": "true" if args.graphs else "false",
            "GLM4VOICE_WEB_DEMO": "false",
            "GLM4VOICE_LOG__LEVEL": "warning",
        }
    )
    for item in args.set:  # e.g. --set SPEECH_DECODER__SCHEDULE=[10,20,40,80,160]
        key, _, value = item.partition("=")
        env[f"GLM4VOICE_{key.upper()}"] = value
    return env


def settings_used(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("GLM4VOICE_") and not k.endswith("_PATH")}


def start_server(port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = log_path.open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "bench.gpu_server", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


def gpu_names() -> list[str]:
    if not shutil.which("nvidia-smi"):
        return []
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip().splitlines()


async def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float) -> float:
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while time.perf_counter() - start < timeout:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if (await client.get("/health/ready")).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            await asyncio.sleep(2)
    raise TimeoutError("server not ready")


async def stats(url: str) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return (await client.get("/bench/stats")).json()


def split(before: dict, after: dict, wall: float) -> dict:
    out = {}
    for key in ("llm_busy_s", "decoder_busy_s", "tokenizer_busy_s"):
        if before.get(key) is not None and after.get(key) is not None:
            busy = after[key] - before[key]
            out[key] = round(busy, 2)
            out[key.replace("_busy_s", "_busy_fraction")] = round(busy / wall, 3) if wall else None
    chunks = after["decoder_chunks"] - before["decoder_chunks"]
    batches = after["decoder_batches"] - before["decoder_batches"]
    out["decoder_mean_batch"] = round(chunks / batches, 2) if batches else None
    out["graph_captures"] = after["graph_captures"] - before["graph_captures"]
    return out


async def our_path(args: argparse.Namespace, url: str) -> list[dict]:
    levels = []
    for concurrency in args.levels:
        lg = loadgen.parse_args(
            [
                "--url",
                url,
                "--turns",
                str(args.turns),
                "--max-tokens",
                str(args.max_tokens),
                "--ramp",
                str(args.ramp),
                "--question-seconds",
                "3",
                "--timeout",
                "240",
            ]
        )
        before = await stats(url)
        level = await loadgen.run_level(url, concurrency, lg, args.wav_b64)
        after = await stats(url)
        summary = level.summary() | {"gpu_split": split(before, after, level.wall_s)}
        levels.append(summary)
        print(
            json.dumps(
                {
                    k: summary[k]
                    for k in (
                        "concurrency",
                        "ok",
                        "errors",
                        "realtime",
                        "ttfa_ms",
                        "first_text_ms",
                        "rtf",
                        "tokens_per_s",
                        "gpu_split",
                    )
                }
            ),
            flush=True,
        )
        if not summary["realtime"] and summary["rtf"]["p50"] and summary["rtf"]["p50"] > 1.5:
            break  # far past capacity: the next levels would only take time
    return levels


async def baseline(args: argparse.Namespace, url: str) -> list[dict]:
    levels = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for concurrency in range(1, args.baseline_max + 1):
            start = time.perf_counter()
            body = {"concurrency": concurrency, "max_tokens": args.max_tokens, "question_seconds": 3}
            response = await client.post("/bench/baseline", json=body)
            if response.status_code != 200:
                print("baseline failed:", response.status_code, response.text[:300], flush=True)
                break
            turns = response.json()["turns"]
            rtf = [t["rtf"] for t in turns if t["rtf"] is not None]
            ttfa = [t["first_audio_s"] * 1000 for t in turns if t["first_audio_s"] is not None]
            level = {
                "concurrency": concurrency,
                "realtime": len(rtf) == len(turns) and all(r < 1 for r in rtf),
                "rtf": loadgen._percentiles(rtf),
                "ttfa_ms": loadgen._percentiles(ttfa),
                "audio_seconds": round(sum(t["audio_s"] for t in turns), 2),
                "wall_s": round(time.perf_counter() - start, 2),
            }
            levels.append(level)
            print("baseline", json.dumps(level), flush=True)
            if not level["realtime"]:
                break
    return levels


async def main_async(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.url:  # an already running bench/gpu_server.py (a CPU check of this script)
        env, url, proc = {}, args.url, None
    else:
        paths = prepare_folders(Path(args.work))
        if args.prepare_only:
            return {}
        env = server_env(args, paths)
        url = f"http://127.0.0.1:{args.port}"
        proc = start_server(args.port, env, out / "server.log")
    try:
        ready_s = await wait_ready(url, proc, args.ready_timeout)
        print(f"server ready in {ready_s:.0f} s", flush=True)
        args.wav_b64 = base64.b64encode(loadgen.make_question_wav(3.0)).decode()
        # Warm-up: captures the decoder's CUDA graphs for the common buckets, compiles nothing else.
        lg = loadgen.parse_args(["--url", url, "--turns", "1", "--max-tokens", str(args.max_tokens)])
        for c in args.warmup:
            await loadgen.run_level(url, c, lg, args.wav_b64)
        warm = await stats(url)
        print("warm-up done", json.dumps(warm), flush=True)
        ours = await our_path(args, url)
        base = await baseline(args, url) if args.baseline_max else []
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    gpu = gpu_names()
    by_c = {lv["concurrency"]: lv for lv in ours}
    at32 = by_c.get(32, {}).get("ttfa_ms", {})
    realtime_streams = max((lv["concurrency"] for lv in ours if lv["realtime"]), default=0)
    baseline_rt = max((lv["concurrency"] for lv in base if lv["realtime"]), default=0)
    latest = {
        "gpu": gpu[0] if gpu else "unknown",
        "date": dt.date.today().isoformat(),
        "realtime_streams": realtime_streams,
        "ttfa_p50_ms_at_32": at32.get("p50"),
        "ttfa_p99_ms_at_32": at32.get("p99"),
        "baseline_realtime_streams": baseline_rt,
        "ratio_vs_baseline": round(realtime_streams / baseline_rt, 1) if baseline_rt else None,
        "levels_tested": [lv["concurrency"] for lv in ours],
        "definition": "a level is real time when every turn's (arrival -> last audio byte) / audio seconds < 1",
        "settings": settings_used(env) | {"turns": args.turns, "max_tokens": args.max_tokens, "ramp_s": args.ramp},
        "weights": "random (vLLM load_format=dummy; random-weight tokenizer and decoder at released sizes)",
    }
    full = {"latest": latest, "server_ready_s": round(ready_s, 1), "warm_stats": warm, "ours": ours, "baseline": base}
    (out / "gpu_suite.json").write_text(json.dumps(full, indent=2) + "\n")
    (out / "latest.json").write_text(json.dumps(latest, indent=2) + "\n")
    print(json.dumps(latest, indent=2), flush=True)
    return full


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",") if x]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    p.add_argument("--work", default="/tmp/g4v_full")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--levels", type=ints, default=[1, 8, 32, 64, 128, 192, 256])
    p.add_argument("--warmup", type=ints, default=[1, 16, 64])
    p.add_argument("--turns", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=390)
    p.add_argument("--ramp", type=float, default=1.0)
    p.add_argument("--baseline-max", type=int, default=8)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.7)
    p.add_argument("--decoder-dtype", default="bfloat16")
    p.add_argument("--decoder-max-batch", type=int, default=32)
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--ready-timeout", type=float, default=420)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra server setting")
    p.add_argument("--prepare-only", action="store_true")
    p.add_argument("--url", default=None, help="use a running bench/gpu_server.py instead of starting one")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main_async(parse_args()))
