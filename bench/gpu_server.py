"""The real server (`create_app(settings)`) plus two benchmark-only routes, for the GPU suite.

- `GET /bench/stats`: busy seconds of the LLM engine, the decoder and the speech tokenizer (the GPU time split),
  decoder batches/chunks and CUDA-graph captures.
- `POST /bench/baseline {"concurrency": N, "max_tokens": M, "question_seconds": S}`: runs the seed's serving
  pattern (bench/baseline_seed.py) inside this process, on the same engine and GPU, and returns each turn.

Settings come from the environment (GLM4VOICE_*), as for `glm4voice-api serve`. These routes exist only in this
benchmark entry point, never in the product's app.

    GLM4VOICE_LLM_PATH=... python -m bench.gpu_server --port 8000
"""

from __future__ import annotations

import argparse
import logging

import uvicorn
from fastapi import Request

from glm4voice_api.app import create_app
from glm4voice_api.config import Settings


def build(settings: Settings):
    app = create_app(settings)
    state: dict = {}

    @app.get("/bench/stats")
    async def stats(request: Request) -> dict:
        rt = request.app.state.runtime
        flow = rt.decoder.decoder.flow
        graphed = getattr(flow, "graphed", None)
        return {
            "llm_busy_s": rt.engine.busy_seconds() if hasattr(rt.engine, "busy_seconds") else None,
            "decoder_busy_s": rt.decoder.busy_seconds,
            "tokenizer_busy_s": rt.audio_input.worker.busy_seconds,
            "decoder_batches": rt.decoder.batches,
            "decoder_chunks": rt.decoder.chunks,
            "graph_captures": graphed.captures if graphed else 0,
            "graph_capture_s": graphed.capture_seconds if graphed else 0.0,
            "engine_active": rt.engine.active_requests(),
            "decoder_sessions": rt.decoder.active_streams(),
        }

    @app.post("/bench/baseline")
    async def baseline(request: Request, body: dict) -> dict:
        import asyncio

        import torch

        from bench.baseline_seed import SeedBaseline
        from bench.loadgen import make_question_wav
        from glm4voice_api.audio.decode import decode_audio
        from glm4voice_api.models.speech_decoder.loader import load_speech_decoder

        rt = request.app.state.runtime
        if torch.cuda.is_available():  # the load levels before leave the caching allocator holding most memory
            torch.cuda.empty_cache()
        if "baseline" not in state:
            # The seed's decoder: its own float32, eager instance (no CUDA graphs, no batching).
            device = rt.decoder.decoder.device
            decoder = await asyncio.to_thread(load_speech_decoder, rt.paths.decoder, device, torch.float32)
            state["baseline"] = SeedBaseline(rt, decoder)
        clip = make_question_wav(float(body.get("question_seconds", 3.0)))
        wav = decode_audio(clip, format="wav", max_bytes=len(clip), max_seconds=60)
        turns = await state["baseline"].level(int(body["concurrency"]), wav, int(body.get("max_tokens", 390)))
        return {
            "turns": [
                {
                    "first_audio_s": t.first_audio_s,
                    "done_s": t.done_s,
                    "audio_s": t.audio_s,
                    "rtf": t.rtf,
                    "tokens": t.tokens,
                }
                for t in turns
            ]
        }

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args()
    settings = Settings(host=args.host, port=args.port)
    logging.basicConfig(level=settings.log.level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(build(settings), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
