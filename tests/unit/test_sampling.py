"""Which constraint a reply is sampled under (pipeline/sampling.py): random weights interleave by force and end only at
their token budget; a real checkpoint is trusted to interleave and end its turn by itself."""

from __future__ import annotations

from dataclasses import fields

from glm4voice_api.pipeline.sampling import Sampling
from glm4voice_api.text.tokenizer import TokenIds

# What the constraint reads (the full-size ids); the others are left None.
READ = {"user": 151336, "num_text": 151329, "audio_0": 151552, "audio_count": 16384}
IDS = TokenIds(**dict.fromkeys(f.name for f in fields(TokenIds)) | READ)


def test_random_weights_never_end_a_reply_at_a_text_slot() -> None:
    constraint = Sampling(IDS, "auto", random_weights=True).constraint()
    assert constraint is not None and constraint.eos == (IDS.user,) and not constraint.eos_at_text_slots
    forced = Sampling(IDS, "auto", random_weights=True).constraint([1, 2], min_audio_after_text=5)
    assert forced is not None and forced.forced_text == (1, 2) and forced.min_audio_after_text == 5


def test_a_real_checkpoint_ends_its_turn_by_itself() -> None:
    assert Sampling(IDS, "auto", random_weights=False).constraint() is None
    forced_on = Sampling(IDS, "on", random_weights=False).constraint()
    assert forced_on is not None and forced_on.eos_at_text_slots
