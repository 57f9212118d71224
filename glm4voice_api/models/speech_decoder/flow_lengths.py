"""Token counts -> mel frames, and the nearest-neighbour stretch of tokens over frames: the flow's length arithmetic,
shared by its eager front (`flow.py`) and its graphed front (`flow_front_graphs.py`), which build their regulator
index tables on the host from these."""

from __future__ import annotations

import functools
from typing import Protocol

import numpy as np
import torch

__all__ = ["mel_length", "nearest_indices"]


class _FrameRates(Protocol):
    """What `mel_length` reads of a `FlowConfig`."""

    input_frame_rate: float
    sample_rate: int
    hop_length: int


def mel_length(num_tokens: int, cfg: _FrameRates) -> int:
    """Mel frames for L tokens exactly as the reference: ``int(L / 12.5 * 22050 / 256)`` in float32.

    float32 is one frame short of floor(L * 441 / 64) for some L (3392, 3776, ...); the goldens follow it.
    Remembered per L: every row of every pass asks, and the torch formula is 7 ops (Python round trips) each time.
    """
    return _mel_length(int(num_tokens), float(cfg.input_frame_rate), float(cfg.sample_rate), float(cfg.hop_length))


@functools.lru_cache(maxsize=4096)
def _mel_length(num_tokens: int, rate: float, sample_rate: float, hop: float) -> int:
    length = torch.tensor([num_tokens], dtype=torch.int32) / rate * sample_rate / hop
    return int(length.int().item())


def nearest_indices(n: int, t: int) -> np.ndarray:
    """Source index of each of ``t`` outputs when ``n`` inputs are stretched by nearest-neighbour interpolation,
    exactly as ``F.interpolate(mode="nearest")`` picks them (float32 scale n / t, floor, clamped; CPU and CUDA
    kernels alike): lets a batch of rows of different lengths be stretched by one gather instead of one call each.
    """
    scale = np.float32(n) / np.float32(t)
    src = np.floor(np.arange(t, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, n - 1)
