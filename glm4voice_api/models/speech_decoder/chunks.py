"""What one decoded chunk needs and returns, shared by the streaming session and the decoder.

A ``ChunkRequest`` is self-contained (tokens, context, carried state, noise source), so a scheduler can put the
chunks of many streams into one ``SpeechDecoder.decode_batch`` call; a ``ChunkResult`` carries the new audio and
the state the stream keeps for its next chunk. ``Voice`` is the speaker prompt both of them start from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["ChunkRequest", "ChunkResult", "Voice"]


@dataclass
class Voice:
    """A speaker prompt: speech tokens and the 80-bin mel of the same audio, aligned (F = mel_length(P))."""

    prompt_tokens: list[int]
    prompt_mel: np.ndarray  # [80, F] float32


@dataclass
class ChunkRequest:
    """One stream's pending chunk, self-contained so a scheduler can batch chunks of many streams.

    ``noise`` ([80, T_total] flow noise) and ``source`` ([1, 256 * HiFT frames] source before the cache
    splice) may be set to inject the reference's random draws; otherwise both come from ``generator``
    (default: a fresh CPU generator seeded 42, drawn by the flow first and then by HiFT, the reference's
    order after its ``manual_seed(42)``).
    """

    tokens: list[int]  # new tokens of this chunk
    prompt_tokens: list[int]  # earlier tokens given as context (voice + bounded history)
    prompt_mel: torch.Tensor  # [80, F_p] mel of the context
    final: bool
    overlap_tail: torch.Tensor | None = None  # [80, 34] held-back frames of the previous chunk
    cache_mel: torch.Tensor | None = None  # [80, 1] last vocoded frame of the previous chunk
    cache_source: torch.Tensor | None = None  # [1, 256] its last source samples
    noise: torch.Tensor | None = None
    source: torch.Tensor | None = None
    generator: torch.Generator | None = None
    """This chunk's own: used by this request only and left in no particular state (the batched HiFT skips the
    reference's last, unused draw), so give each request a fresh one, never one shared with another row."""
    rng_device: str = "cpu"
    """Where the fresh seed-42 generator is made when ``generator`` is None (see DecoderStreamConfig)."""


@dataclass
class ChunkResult:
    """What a decoded chunk returns: new audio plus the state the stream must carry to its next chunk."""

    request: ChunkRequest
    speech: np.ndarray  # [S] float32, 22.05 kHz
    mel: torch.Tensor  # [80, M] returned mel (PR #86: without the prepended cache frame)
    flow_mel: torch.Tensor  # [80, M_raw] raw flow output before crossfade/trim (for tests and metrics)
    overlap_tail: torch.Tensor | None = None
    cache_mel: torch.Tensor | None = None
    cache_source: torch.Tensor | None = None
    hift_source: torch.Tensor | None = field(default=None, repr=False)  # [1, N] source HiFT used
