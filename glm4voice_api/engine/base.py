"""The narrow engine interface the pipeline depends on (vLLM behind it in production, a fake in unit tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from glm4voice_vllm import EXTRA_ARGS_KEY, INTERLEAVE_PATTERN


class EngineError(Exception):
    """Base of engine failures."""


class EngineDeadError(EngineError):
    """The engine cannot serve any more requests (maps to 503)."""


class EngineRequestError(EngineError):
    """The engine rejected one request (maps to 400); the engine itself is fine."""


@dataclass(frozen=True)
class InterleaveConstraint:
    """Per-request sampler constraint enforced by the vLLM plugin (13 text / 26 audio, optional forced text)."""

    text_range: tuple[int, int]
    audio_range: tuple[int, int]
    eos: tuple[int, ...]
    pattern: tuple[int, int] = INTERLEAVE_PATTERN
    forced_text: tuple[int, ...] | None = None
    min_audio_after_text: int | None = None
    max_audio_after_text: int | None = None
    eos_at_text_slots: bool = True

    def to_extra_args(self) -> dict:
        return {
            EXTRA_ARGS_KEY: {
                "text_range": list(self.text_range),
                "audio_range": list(self.audio_range),
                "eos": list(self.eos),
                "pattern": list(self.pattern),
                "forced_text": list(self.forced_text) if self.forced_text is not None else None,
                "min_audio_after_text": self.min_audio_after_text,
                "max_audio_after_text": self.max_audio_after_text,
                "eos_at_text_slots": self.eos_at_text_slots,
            }
        }


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop_token_ids: tuple[int, ...] = ()
    constraint: InterleaveConstraint | None = None
    logprobs: int | None = None
    """Report each generated token's logprob and this many top alternatives (None: no logprobs)."""


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's logprob and the top alternatives at its position (most likely first)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class GenerationDelta:
    """New ids since the previous delta; `finish_reason` is set on the last one."""

    token_ids: list[int]
    finished: bool = False
    finish_reason: str | None = None
    num_cached_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None
    """One per id in `token_ids` when the request asked for logprobs."""


@dataclass
class EngineInfo:
    max_model_len: int
    max_num_seqs: int
    random_weights: bool
    extra: dict = field(default_factory=dict)


class LLMEngine(Protocol):
    """What the pipeline needs from an LLM engine."""

    info: EngineInfo

    def generate(
        self, prompt_ids: list[int], params: GenerationParams, request_id: str
    ) -> AsyncIterator[GenerationDelta]:
        """Stream the reply. Closing the iterator early aborts the request in the engine.

        `request_id` labels the request (logs); it need not be unique (clients choose x-request-id): the engine
        runs the request under a unique id of its own, so no other request can ever abort it."""
        ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None:
        """Raise EngineDeadError if the engine cannot serve."""
        ...

    def active_requests(self) -> int:
        """Requests submitted and not yet finished or aborted (leak checks, metrics)."""
        ...

    def aborted_requests(self) -> int:
        """Requests aborted before they finished (disconnects, limits, shutdown)."""
        ...

    async def shutdown(self) -> None: ...


def staircase_max_tokens(batch_sizes: list[int], steps: int) -> list[int]:
    """Reply lengths for one warm-up wave whose running batch steps down through every size, largest first.

    Started together, request i runs `steps` decode steps at every size larger than i, so the batch holds each size
    for `steps` steps as groups finish: one wave instead of one round per size (each round paid its own prefill and
    tail; on an H100 the nine rounds took 7.3 s of a cold start, 2 s warm)."""
    sizes = sorted(set(batch_sizes), reverse=True)
    if not sizes or sizes[-1] < 1 or steps < 1:
        msg = f"batch sizes must be >= 1 and steps >= 1, got {batch_sizes}, {steps}"
        raise ValueError(msg)
    return [steps * sum(size > i for size in sizes) for i in range(sizes[0])]
