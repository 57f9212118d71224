"""The engine warm-up's one wave: its running batch holds every requested size, largest first."""

from __future__ import annotations

import pytest

from glm4voice_api.engine.base import staircase_max_tokens


def running_batch_per_step(lengths: list[int]) -> list[int]:
    """Requests started together, one token per decode step each: how many run at every step."""
    return [sum(n > step for n in lengths) for step in range(max(lengths))]


@pytest.mark.parametrize(
    ("sizes", "steps"),
    [([1, 2, 4, 8, 16, 32, 64, 128, 256], 4), ([1, 2], 4), ([3, 1, 12], 2), ([5], 3), ([1], 1)],
)
def test_the_batch_steps_down_through_every_size_for_the_given_steps(sizes, steps):
    lengths = staircase_max_tokens(sizes, steps)
    assert len(lengths) == max(sizes)  # the largest size runs in full
    expected = [size for size in sorted(sizes, reverse=True) for _ in range(steps)]
    assert running_batch_per_step(lengths) == expected


def test_duplicate_sizes_count_once():
    assert staircase_max_tokens([2, 2, 1], 4) == staircase_max_tokens([1, 2], 4) == [8, 4]


@pytest.mark.parametrize(("sizes", "steps"), [([], 4), ([0, 2], 4), ([2], 0)])
def test_an_impossible_plan_is_refused(sizes, steps):
    with pytest.raises(ValueError, match="batch sizes"):
        staircase_max_tokens(sizes, steps)


def test_every_warm_up_request_is_seeded():
    """A seeded request samples with its own generator, never the device's default one, which is in capture mode
    while the decoder host (starting beside the warm-up) captures a CUDA graph (vllm_engine.WARMUP_SEED)."""
    import asyncio
    from types import SimpleNamespace

    from glm4voice_api.engine.vllm_engine import VllmLLMEngine

    seen = []

    async def generate(prompt_ids, params, request_id):
        seen.append(params)
        yield None

    engine = object.__new__(VllmLLMEngine)
    engine.info = SimpleNamespace(max_num_seqs=8)
    engine.generate = generate
    asyncio.run(engine.warm_up([1, 2, 4, 8]))
    assert len(seen) == 8 and all(p.seed is not None for p in seen) and len({p.seed for p in seen}) == 8
    assert {(p.temperature, p.top_p) for p in seen} == {(0.8, 0.8)}  # still the serving sampler's random path
