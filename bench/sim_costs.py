"""Cost models for bench/sim_schedule.py: how long an LLM step, a speech tokenizer batch and a decoder pass take,
fitted to this project's H200 measurements, and the speech decoder's audio bookkeeping (how much audio a chunk
brings). Models, not measurements: `fit_passes` refits the pass model to a GPU run's logged passes.

The models (H200, full-size shapes, bench/results/GPU.md, 2026-12-04):
- LLM step: `llm_step_s + llm_step_per_seq_s` x running sequences (3.3k tok/s at 32 alone), `slowdown` x longer while
  a decoder pass runs (vLLM's process and ours time-slice the GPU: 1.3k tok/s at 32 streams beside the decoder);
- decoder pass: alone, `alone_fixed_s + alone_cell_s` x cells, cells = rows padded to the CUDA-graph batch bucket x
  the longest row's frames padded to its frame bucket (the decoder profile: 53 ms for 1 x 128, 676 ms for 32 x
  1280); beside the LLM, a longer fixed part and `sliced_factor` x the per-cell time;
- a turn: `upload_s` (the question's upload and the prompt), the speech tokenizer (batches of up to 16 questions,
  `tokenizer_fixed_s + tokenizer_clip_s` x clips: ~0.4 s for 16 beside the LLM, from its busy time at 32 streams), a
  prefill of one step plus `prefill_s`, then the reply's tokens, 13 text then 26 audio repeated (390 tokens: 20.8 s
  of speech); the client sends its next turn once the reply is complete, as bench/loadgen.py does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from glm4voice_api.models.speech_decoder.flow_graphs import padded_batch
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig

SAMPLE_RATE = 22050
SAMPLES_PER_TOKEN = 1764  # 12.5 tokens per second of audio
HELD_BACK = 5  # tokens the decoder keeps back for the next chunk's crossfade (all come out with the final flush)


FRAMES_PER_TOKEN = 22050 / 256 / 12.5  # mel frames (hop 256 at 22.05 kHz) per speech token


def frame_bucket(tokens: int) -> int:
    """The CUDA-graph frame bucket of a row of `tokens` (flow_graphs.FlowGraphConfig's defaults)."""
    frames = int(tokens * FRAMES_PER_TOKEN + 0.5)
    step = 128 if frames <= 512 else 256
    return -(-frames // step) * step


@dataclass(frozen=True)
class CostModel:
    llm_step_s: float = 0.006
    llm_step_per_seq_s: float = 0.00012
    slowdown: float = 2.5
    prefill_s: float = 0.03
    alone_fixed_s: float = 0.045
    alone_cell_s: float = 1.54e-5
    """Seconds per (padded row x padded frame): the H200 decoder profile, 1 x 128 -> 53 ms, 32 x 1280 -> 676 ms."""
    sliced_fixed_s: float = 0.1
    sliced_factor: float = 2.2
    """Beside the LLM: a longer fixed part and ~2x the per-cell time (fitted to the suite's mean passes per level:
    0.13 s at 1 row, 0.37-0.40 s at 5, 0.56-0.62 s at 10, 0.74 s at 15.5 rows; the profile: 486 -> 982 ms)."""
    upload_s: float = 0.02
    tokenizer_fixed_s: float = 0.02
    tokenizer_clip_s: float = 0.024
    tokenizer_batch: int = 16
    reply_tokens: int = 390
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """The CUDA-graph batch sizes a pass is padded to."""

    def pass_s(self, rows: int, longest: int, *, beside_llm: bool) -> float:
        cells = padded_batch(rows, self.batch_buckets) * frame_bucket(longest)
        if beside_llm:
            return self.sliced_fixed_s + self.sliced_factor * self.alone_cell_s * cells
        return self.alone_fixed_s + self.alone_cell_s * cells


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class SimRequest:
    prompt_tokens: list[int]
    tokens: list[int]
    final: bool


class SimStream:
    """A decoder session's bookkeeping: how much audio each chunk brings (the real stream's arithmetic)."""

    def __init__(self, config: DecoderStreamConfig) -> None:
        self.context = config.max_prompt_tokens
        self.decoded = 0
        self.emitted = 0

    def prepare(self, tokens: list[int], *, size: int | None = None, final: bool = False) -> SimRequest | None:
        if final and not tokens and not self.decoded:
            return None
        history = self.decoded if self.context is None else min(self.decoded, self.context)
        return SimRequest([0] * history, list(tokens), final)

    def commit(self, request: SimRequest) -> np.ndarray:
        self.decoded += len(request.tokens)
        ready = (self.decoded - (0 if request.final else HELD_BACK)) * SAMPLES_PER_TOKEN
        n, self.emitted = max(0, ready - self.emitted), max(self.emitted, ready)
        return np.zeros(n, np.float32)

    def close(self) -> None:
        pass


def fit_passes(path: str, cost: CostModel | None = None) -> dict:
    """Fit the beside-the-LLM pass model to a GPU run's passes (gpu_passes.json from bench/gpu_suite.py): seconds =
    sliced_fixed_s + sliced_factor x alone_cell_s x cells, least squares over every pass that was not nested."""
    cost = cost or CostModel()
    with open(path) as f:
        data = json.load(f)
    xs, ys = [], []
    for phases in data.get("configs", {}).values():
        for phase in phases:
            for passes in phase.get("schedulers", []):
                for _start, seconds, rows, longest, *_rest, nested in passes:
                    if not nested:
                        batch = padded_batch(rows, cost.batch_buckets)
                        xs.append(cost.alone_cell_s * batch * frame_bucket(longest))
                        ys.append(seconds)
    if len(xs) < 2:
        raise ValueError(f"{path}: {len(xs)} passes, too few to fit")
    slope, intercept = np.polyfit(np.asarray(xs), np.asarray(ys), 1)
    residual = np.asarray(ys) - (intercept + slope * np.asarray(xs))
    return {
        "passes": len(xs),
        "sliced_fixed_s": round(float(intercept), 4),
        "sliced_factor": round(float(slope), 3),
        "rms_error_s": round(float(np.sqrt(np.mean(residual**2))), 4),
    }


VALIDATION = [
    (
        "ladder: 16 streams within 1 s, 1 turn",
        {"streams": 16, "stagger_s": 1.0, "turns": 1},
        "playable p50 / p99 784-862 / 865-1084 ms (five H200 runs, GPU.md 2026-12-04 evening 2)",
    ),
    (
        "ladder: 32 streams within 1 s, 1 turn",
        {"streams": 32, "stagger_s": 1.0, "turns": 1},
        "playable 900-1139 / 1267-1384 ms; 15.5-17.8 rows per pass",
    ),
    (
        "overload: 32 sessions in step, 60 s",
        {"streams": 32, "stagger_s": 1.0, "seconds": 60.0},
        "91.5% of turns gap-free (all admitted)",
    ),
    (
        "overload: 32 sessions over 8 s, 40 s, no limit",
        {"streams": 32, "stagger_s": 8.0, "seconds": 40.0},
        "54% gap-free (all 32 admitted until the limit was cut to 16 five seconds in, then 16-23 at once)",
    ),
    (
        "overload: 32 sessions over 8 s, 40 s, <= 20 at once",
        {"streams": 32, "stagger_s": 8.0, "seconds": 40.0, "max_active": 20},
        "the same run: 54% gap-free; passes of 5.3-5.6 rows at 32 streams behind a limit of 20-22 (another run)",
    ),
]
"""Scenarios measured on the GPU, with what was measured: --validate runs them so the model's errors are in view."""
