"""How replies are sampled: the model's defaults, the end-of-turn ids and the interleave constraint.

The constraint (13 text / 26 audio slots, see the vLLM plugin) is switched on for random weights, which never
interleave by themselves, or always/never by the `interleave_constraint` setting; forced text (speech) always uses it.
With random weights it also keeps the end-of-turn id out of text slots: such a reply ends at its token budget.
"""

from __future__ import annotations

from typing import Literal

from glm4voice_api.engine.base import InterleaveConstraint
from glm4voice_api.text.tokenizer import TokenIds

# Sampling defaults of the model (its generation config and the official servers), used when a request gives none.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.8
RANDOM_WEIGHTS_MAX_TOKENS = 195  # 5 cycles of 13 text + 26 audio: random weights never end a reply by themselves


class Sampling:
    def __init__(self, ids: TokenIds, mode: Literal["auto", "on", "off"], *, random_weights: bool) -> None:
        self.ids = ids
        self.mode = mode
        self.random_weights = random_weights

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return self.ids.stop_ids

    def constraint(self, forced_text: list[int] | None = None, **kwargs: int | None) -> InterleaveConstraint | None:
        """The sampler constraint for a reply, or None when the model is trusted to interleave by itself."""
        if forced_text is None and (self.mode == "off" or (self.mode == "auto" and not self.random_weights)):
            return None
        ids = self.ids
        return InterleaveConstraint(
            text_range=(0, ids.num_text),
            audio_range=(ids.audio_0, ids.audio_0 + ids.audio_count),
            eos=(ids.user,),
            forced_text=tuple(forced_text) if forced_text is not None else None,
            # Random weights end a reply only at its token budget: their end-of-turn id at a text slot is noise
            # (near-uniform logits: ~1 in 120k text steps on a full-size vocabulary; one of ~10k benchmark replies
            # ended before its first audio that way, bench/results/GPU.md session 27), and a benchmark's or
            # demo's reply length should be the one asked for.
            eos_at_text_slots=not self.random_weights,
            **kwargs,
        )
