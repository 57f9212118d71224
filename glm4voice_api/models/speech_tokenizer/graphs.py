"""The speech tokenizer's encoder as one CUDA graph per (rows, mel frames) bucket (`GraphedEncoder`).

Why: the encoder runs ~300 small ops from Python one by one. On an H100 one 3 s question took 10.3 ms in float32
where its arithmetic is ~2 ms (bench/results/GPU.md session 25), on every spoken request's critical path: the input
audio was 14.6 of the 251.6 ms first audio at one stream (session 28), and in vLLM's process each launch may also wait
for the GIL behind the engine's busy thread. A replay is one launch.

Exact in real arithmetic: the features are computed as without graphs (the reference's padding to the longest clip,
rounded up to one token); the bucket adds zero frames with a zero frame mask after them and rows of zeros (every
frame marked real, so no row is all masked) after the batch. A real frame never sees an added one: the convolutions
are causal (left padding only), added frames are masked as attention keys, and the pooling windows start at frame 0
with the real frames a whole number of tokens (8 frames each), so no window mixes both. In floats, the GEMMs over
more rows may round differently: on the CPU (tests/models/test_speech_tokenizer_graphs.py) the conformance
checkpoint's tokens are equal and the quantizer's inputs within 1e-5.

Buckets: frames padded up to a multiple of `frame_bucket`, rows up to a power of two; `warmup` captures rows 1 for
every frame bucket up to the model's 30 s window and more rows for short clips (what a burst of questions makes).
Any other shape runs eagerly, as without graphs: a capture never lands on a request's path. `use_graphs=False` runs
every bucket eagerly through the same buffers: the CPU test path. Memory: one shared arena
(features and frame mask, the largest bucket's size) and one graph pool (`graph_buckets.py`). Not thread safe: the
tokenizer's worker thread calls it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from glm4voice_api.models.graph_buckets import BucketGraphs, StaticBucket
from glm4voice_api.models.speech_tokenizer.encoder import CONV_STRIDE, WhisperVQEncoder

__all__ = ["EncoderGraphConfig", "GraphedEncoder"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderGraphConfig:
    frame_bucket: int = 200
    """Mel frames (100 Hz) are padded up to a multiple of this: 2 s, 15 buckets up to the 30 s window; at most 2 s of
    padding (a few ms of arithmetic, less than what the graph saves)."""
    max_rows: int = 8
    """Most rows a graphed pass holds (a batch of more clips runs eagerly)."""
    multi_row_frames: int = 600
    """Rows 2 to `max_rows` are captured up to this many frames (6 s: spoken questions in a burst); rows 1 up to 30 s."""
    max_graphs: int = 64


class _Bucket(StaticBucket):
    def __init__(self, key: tuple[int, int], n_mels: int, floats: torch.Tensor, ints: torch.Tensor) -> None:
        rows, frames = key
        self.features = floats[: rows * n_mels * frames].view(rows, n_mels, frames)
        self.frame_mask = ints[: rows * frames].view(rows, frames)
        self.token_ids: torch.Tensor | None = None
        self.token_mask: torch.Tensor | None = None


class GraphedEncoder(BucketGraphs[_Bucket]):
    """`WhisperVQEncoder`'s token ids and token mask through bucketed CUDA graphs (`encode`)."""

    label = "speech tokenizer"
    key_format = "rows=%d frames=%d"
    log = logger

    def __init__(self, model: WhisperVQEncoder, config: EncoderGraphConfig | None = None, *, use_graphs: bool = True):
        super().__init__(config or EncoderGraphConfig(), use_graphs)
        self.model = model
        frames_per_token = model.config.frames_per_token
        if self.config.frame_bucket % frames_per_token:
            msg = f"frame_bucket {self.config.frame_bucket} is not a whole number of tokens ({frames_per_token} frames)"
            raise ValueError(msg)
        self.max_frames = model.config.max_source_positions * CONV_STRIDE

    @property
    def _weight(self) -> torch.Tensor:
        return self.model.conv1.weight

    def bucket(self, rows: int, frames: int) -> tuple[int, int] | None:
        """The (rows, frames) bucket of a pass; None where it runs eagerly (more than `max_rows` rows)."""
        if rows > self.config.max_rows or frames > self.max_frames:
            return None
        step = self.config.frame_bucket
        return 1 << (rows - 1).bit_length(), min(-(-frames // step) * step, self.max_frames)

    def _sizes(self, key: tuple[int, int]) -> tuple[int, int]:
        rows, frames = key
        return rows * self.model.config.num_mel_bins * frames, rows * frames

    def _new_arena(self, floats: int, ints: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = self._weight
        return torch.zeros(floats, device=w.device, dtype=w.dtype), torch.zeros(ints, dtype=torch.long, device=w.device)

    def _views(self, key: tuple[int, int], arena: tuple[torch.Tensor, torch.Tensor]) -> _Bucket:
        return _Bucket(key, self.model.config.num_mel_bins, *arena)

    def _device(self, buf: _Bucket) -> torch.device:
        return buf.features.device

    def _prime(self, buf: _Bucket) -> None:
        buf.features.zero_()
        buf.frame_mask.fill_(1)

    def _run(self, buf: _Bucket) -> None:
        out = self.model(buf.features, buf.frame_mask)
        buf.token_ids, buf.token_mask = out.token_ids, out.token_mask

    @torch.inference_mode()
    def warmup(self) -> int:
        """Capture the serving buckets (see the module's docstring); the number of graphs."""
        step = self.config.frame_bucket
        keys = [(1, f) for f in range(step, self.max_frames + 1, step)]
        rows = [1 << i for i in range(1, int(math.log2(self.config.max_rows)) + 1)]
        keys += [
            (r, f) for r in rows for f in range(step, min(self.config.multi_row_frames, self.max_frames) + 1, step)
        ]
        if keys:
            self._reserve(max(keys, key=self._sizes))  # one arena for all: every bucket's buffers are views of it
        return self._capture_all(keys) if self.use_graphs else 0

    @torch.inference_mode()
    def encode(self, features: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, n_mels, F] (model dtype), frame_mask [B, F] -> (token ids, token mask), each [B, F / 8], as
        `WhisperVQEncoder.forward` gives them."""
        rows, _, frames = features.shape
        key = self.bucket(rows, frames)
        buf = self._graphs.get(key) if key is not None else None
        if buf is None and key is not None and not self.use_graphs:
            buf = self._buffers(key)  # the same buffers run eagerly: the CPU test path
        if buf is None:
            out = self.model(features, frame_mask)
            return out.token_ids, out.token_mask
        buf.features.zero_()
        buf.features[:rows, :, :frames].copy_(features)
        buf.frame_mask.fill_(1)  # the added rows: all real (no all-masked attention row)
        buf.frame_mask[:rows].zero_()
        buf.frame_mask[:rows, :frames].copy_(frame_mask)
        self._replay(buf)
        assert buf.token_ids is not None and buf.token_mask is not None
        tokens = frames // self.model.config.frames_per_token
        return buf.token_ids[:rows, :tokens].clone(), buf.token_mask[:rows, :tokens].clone()
