"""The flow's front (token embedding, Conformer encoder, `encoder_proj`, length regulator, mask, speaker affine) as one
CUDA graph per shape bucket (`GraphedFlowFront`), beside the ODE's graphs (`flow_graphs.py`) and HiFT's
(`hift_graphs.py`).

Why: outside the graphed ODE, `FlowModel.begin_batch` launches the front op by op from Python (the encoder alone ~283
ops per pass at full size). With the LLM in the same process each launch may wait for the GIL behind vLLM's busy
engine thread (on the CPU, 2000 small ops took 981 ms beside one never-idle Python thread). A replay is one launch.

`front_core` is the front on device tensors of fixed shapes, with no host synchronisation and no Python branch on
tensor values: the host builds what depends on the row lengths (the regulator's gather index, as
`InterpolateRegulator` does, and the mel lengths) and copies it in once; masks are computed from length tensors
and always applied (x * 1.0 == x). Its one value-dependent choice, today's "no row is padded: plain GroupNorm", is a
device flag selecting between both norms (`torch.where`), so that even that case gives today's values.

Exact: the same ops in the same order as `begin_batch` (`FlowModel.encode`, `InterpolateRegulator.forward`,
`FlowModel.speaker`). On the same shapes the values are equal (`tests/models/test_flow_front_graphs.py`,
`torch.equal`). Padding to a bucket changes shapes: rows (to the flow graphs' batch buckets) never mix with real
ones, but a GEMM over more rows may round differently (on the CPU: the encoder's equal, the speaker Linear 1.2e-7
off on a row with an embedding; a zero embedding, GLM-4-Voice's, gives the bias exactly); tokens (to a multiple of
`token_bucket`) are hidden from every query by the key mask, but the GEMMs, softmax and attention reductions then
run over longer rows; frames (to the ODE graphs' frame bucket of the padded token count) change the regulator's
convolution and GroupNorm input widths: float rounding only (mu within 1e-5 on the CPU, measured 1.4e-6).

Buckets: a pass of R rows and at most L tokens runs at (the flow graphs' batch bucket of R, L rounded up to
`token_bucket`); its frames T are the ODE graphs' frame bucket of the mel length of the padded token count, so that
the key is two numbers and a pass's frame bucket (that of its longest row, what the ODE pads to) is never wider.
The caller gets mu / mask cut to the ODE's frame bucket of its longest row: what `regulate` pads to with
`bucket_regulator`, so the ODE's inputs are those of today's bucketed path.

Static buffers are views of one shared arena (ints and floats; the largest bucket's size, `warmup` reserves it):
buckets run one at a time on one stream, inputs written just before a replay, outputs cloned just after. The
encoder's position tables are built once for `max_tokens` before any capture and kept here (a graph reads their
memory: the encoder's own cache may replace its tables, which would free memory a graph still reads). Graphs share
one memory pool and their own capture stream; beyond `max_graphs` a bucket runs eagerly through the same buffers;
a graph is never destroyed while others live (`graph_buckets.py`, shared with HiFT's runner). `use_graphs=False` runs
the same buffers and code eagerly: the CPU test path. Not thread safe: one decoder thread calls it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from glm4voice_api.models.speech_decoder.flow_estimator import masked_group_norm
from glm4voice_api.models.speech_decoder.flow_graphs import padded_batch
from glm4voice_api.models.speech_decoder.flow_lengths import mel_length, nearest_indices
from glm4voice_api.models.speech_decoder.graph_buckets import BucketGraphs, StaticBucket
from glm4voice_api.models.speech_decoder.transfer import lengths_tensor, to_device

__all__ = ["FlowFrontGraphConfig", "GraphedFlowFront", "front_core", "regulate_static"]

logger = logging.getLogger(__name__)


def regulate_static(
    reg: nn.Module, h: torch.Tensor, index: torch.Tensor, feat_lens: torch.Tensor, uniform: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`InterpolateRegulator.forward` on device tensors: h [B, L, C], index [B, T] (row b's source token of each of
    its feat_lens[b] frames, anything valid past them), feat_lens [B] int64, uniform a 0-dim bool (True: every row
    fills all T frames, where today's pass skips the masks and uses plain GroupNorm). -> (mu [B, C, T], mask
    [B, 1, T] in h's dtype)."""
    t_max = index.size(1)
    mask = torch.arange(t_max, device=h.device)[None, :] < feat_lens[:, None]
    mask = mask.unsqueeze(1).to(h.dtype)  # [B, 1, T]
    x = torch.gather(h, 1, index[:, :, None].expand(-1, -1, h.size(2))).transpose(1, 2)  # [B, C, T]
    x = x * mask
    for layer in reg.model:
        if isinstance(layer, nn.GroupNorm):
            x = torch.where(uniform, layer(x), masked_group_norm(x, layer, mask))
        elif isinstance(layer, nn.Conv1d):
            x = layer(x * mask)
        else:
            x = layer(x)
    return x * mask, mask


def front_core(
    flow: nn.Module,
    tables: tuple[torch.Tensor, torch.Tensor],
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    index: torch.Tensor,
    feat_lens: torch.Tensor,
    uniform: torch.Tensor,
    embedding: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`begin_batch`'s front, capturable as one CUDA graph: tokens [B, L] int64 (right-padded with 0), lengths [B]
    int64 (>= 1), the regulator's index [B, T] and mel lengths feat_lens [B] int64, uniform (see `regulate_static`),
    speaker embeddings [B, spk_dim] (zeros: none), the encoder's position tables for >= L tokens
    (`BlockConformerEncoder.position_tables`) -> (mu [B, 80, T], mask [B, 1, T], spks [B, 80])."""
    _, h = flow.encode(tokens, lengths, tables)
    mu, mask = regulate_static(flow.length_regulator, h, index, feat_lens, uniform)
    return mu, mask, flow.speaker(embedding)


@dataclass(frozen=True)
class FlowFrontGraphConfig:
    token_bucket: int = 16
    """Tokens are padded up to a multiple of this. 16: a flow input runs from 10 tokens (a reply's first chunk) to
    ~256 (100 tokens of context + a 156-token chunk), so 16 token buckets x 6 batch buckets, ~100 graphs, cover the
    serving range; at most 15 padding tokens (~100 mel frames, less than one of the ODE's frame buckets) per pass, and
    the attention's L x L matrices keep 32-byte aligned rows in bf16. 32 would halve the graphs for twice the padding."""
    max_tokens: int = 1024
    """Longer passes (and passes whose frames pass the ODE graphs' `max_frames`) run eagerly; the position tables
    are built for this many tokens (a 2 MB table and a 1 MB mask at full size)."""
    max_graphs: int = 128
    """Most graphs captured (then new buckets run eagerly through the same static buffers)."""


class _Bucket(StaticBucket):
    """One bucket's static buffers (views of the shared arenas) and its graph."""

    def __init__(self, key: tuple[int, int, int], flow: nn.Module, floats: torch.Tensor, ints: torch.Tensor) -> None:
        batch, tokens, frames = key
        mel, spk = flow.cfg.output_size, flow.cfg.spk_embed_dim
        self.ints = ints[: _int_count(key)]  # one host-to-device copy fills them all
        views, at = [], 0
        for shape in ((batch, tokens), (batch,), (batch, frames), (batch,), (1,)):
            views.append(self.ints[at : at + math.prod(shape)].view(shape))
            at += math.prod(shape)
        self.tokens, self.lengths, self.index, self.feat_lens, self.flag = views
        views, at = [], 0
        for shape in ((batch, spk), (batch, mel, frames), (batch, 1, frames), (batch, mel)):
            views.append(floats[at : at + math.prod(shape)].view(shape))
            at += math.prod(shape)
        self.emb, self.mu, self.mask, self.spks = views


def _int_count(key: tuple[int, int, int]) -> int:
    batch, tokens, frames = key
    return batch * (tokens + frames + 2) + 1


class GraphedFlowFront(BucketGraphs[_Bucket]):
    """`begin_batch`'s front (mu, mask, spks of a pass) through bucketed CUDA graphs; used by `FlowModel.begin_batch`
    while the ODE's graphs are on (`flow.graphed`: its batch buckets and frame buckets are this runner's)."""

    label = "flow front"
    key_format = "batch=%d tokens=%d frames=%d"
    log = logger

    def __init__(self, flow: nn.Module, config: FlowFrontGraphConfig | None = None, *, use_graphs: bool = True) -> None:
        # The own capture stream (`graph_buckets.py`) matters here too: the encoder is mostly GEMMs.
        super().__init__(config or FlowFrontGraphConfig(), use_graphs)
        self.flow = flow
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self._held_tables: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def _weight(self) -> torch.Tensor:
        return self.flow.input_embedding.weight

    def bucket(self, rows: int, tokens: int) -> tuple[int, int, int] | None:
        """(rows, tokens, frames) of the bucket a pass of `rows` rows of at most `tokens` tokens runs in; None: past
        `max_tokens` or the ODE graphs' `max_frames`, or no ODE graphs (such a pass runs eagerly)."""
        graphed = self.flow.graphed
        step = self.config.token_bucket
        padded = -(-tokens // step) * step
        if graphed is None or padded > self.config.max_tokens:
            return None
        frames = graphed.bucket(1, self._mel_length(padded))[1]
        if frames > graphed.config.max_frames:
            return None
        return padded_batch(rows, graphed.batch_buckets), padded, frames

    def _mel_length(self, tokens: int) -> int:
        return mel_length(tokens, self.flow.cfg)

    def _tables_now(self, tokens: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Position tables for at least `tokens` (built for `max_tokens`, rounded to the token bucket, unless longer),
        before any capture that reads them: a capture calls this first, so its run never builds them."""
        if self._tables is None or self._tables[1].shape[0] < tokens:
            step = self.config.token_bucket
            n = max(tokens, -(-self.config.max_tokens // step) * step)
            w = self._weight
            # Views of the encoder's cached tables (or, past its cache, its own), held here with every earlier set:
            # their memory lives as long as the graphs that read it, whatever the encoder's cache does later.
            self._tables = self.flow.encoder.position_tables(n, w.device, w.dtype)
            self._held_tables.append(self._tables)
        return self._tables

    def _sizes(self, key: tuple[int, int, int]) -> tuple[int, int]:
        batch, _, frames = key
        cfg = self.flow.cfg
        return batch * (cfg.spk_embed_dim + (cfg.output_size + 1) * frames + cfg.output_size), _int_count(key)

    def _new_arena(self, floats: int, ints: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = self._weight
        return torch.zeros(floats, device=w.device, dtype=w.dtype), torch.zeros(ints, dtype=torch.long, device=w.device)

    def _views(self, key: tuple[int, int, int], arena: tuple[torch.Tensor, torch.Tensor]) -> _Bucket:
        return _Bucket(key, self.flow, *arena)

    def _device(self, buf: _Bucket) -> torch.device:
        return buf.mu.device

    @torch.inference_mode()
    def reserve(self, max_batch: int, max_tokens: int) -> None:
        """Allocate the arena for the largest bucket of up to (max_batch rows, max_tokens tokens) now, unless one that
        large exists: every smaller bucket's buffers then fit in it."""
        graphed = self.flow.graphed
        keys = [] if graphed is None else [self.bucket(max_batch, t) for t in self.token_buckets(max_tokens)]
        keys = [k for k in keys if k is not None]
        if not keys:
            return
        floats, ints = max(self._sizes(k)[0] for k in keys), max(_int_count(k) for k in keys)
        if not self._has_arena(floats, ints):
            self._reserve(max(keys, key=self._sizes))

    def token_buckets(self, max_tokens: int) -> list[int]:
        step = self.config.token_bucket
        top = -(-min(max_tokens, self.config.max_tokens) // step) * step
        return list(range(step, top + 1, step))

    @torch.inference_mode()
    def warmup(self, max_batch: int, max_tokens: int) -> int:
        """Capture every bucket up to (max_batch rows, max_tokens tokens) now, so that no pass waits for a capture
        (none without the ODE's graphs: the front runs only beside them). The arena is reserved at the largest
        bucket's size first, so that every bucket's buffers fit in it."""
        graphed = self.flow.graphed
        if not self.use_graphs or graphed is None:
            return 0
        sizes = sorted({padded_batch(rows, graphed.batch_buckets) for rows in range(1, max_batch + 1)})
        keys = [k for t in self.token_buckets(max_tokens) for b in sizes if (k := self.bucket(b, t)) is not None]
        if not keys:
            return len(self._graphs)
        self._tables_now(max(k[1] for k in keys))
        self.reserve(max_batch, max_tokens)
        return self._capture_all(keys)

    @torch.inference_mode()
    def __call__(
        self,
        tokens: np.ndarray,
        lengths: list[int],
        feat_lens: list[int],
        embeddings: list[torch.Tensor | None],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """tokens [R, L] int64 on the host (row b right-padded past lengths[b] >= 1), the rows' mel lengths, their
        speaker embeddings (None: zeros) -> (mu [R, 80, T], mask [R, 1, T], spks [R, 80]) with T the ODE graphs'
        frame bucket of max(feat_lens); None when the pass does not fit a bucket (the caller runs it eagerly)."""
        rows = len(lengths)
        key = self.bucket(rows, int(tokens.shape[1]))
        if key is None:
            return None
        frames = self.flow.graphed.bucket(1, max(feat_lens))[1]  # type: ignore[union-attr]
        buf = self._bucket_for(key)
        self._fill(buf, tokens, lengths, feat_lens, embeddings)
        self._replay(buf)
        # Cloned: the next pass (any bucket: one arena) overwrites these buffers.
        return buf.mu[:rows, :, :frames].clone(), buf.mask[:rows, :, :frames].clone(), buf.spks[:rows].clone()

    def _fill(
        self,
        buf: _Bucket,
        tokens: np.ndarray,
        lengths: list[int],
        feat_lens: list[int],
        embeddings: list[torch.Tensor | None],
    ) -> None:
        """The pass's inputs into the bucket's buffers: one host array, one copy. Padding rows: one token 0, the mel
        length of one token (at least 1: masked statistics need a valid frame), index 0, zero embedding."""
        rows, width = tokens.shape
        frames = buf.mu.shape[2]
        host = np.zeros(buf.ints.numel(), dtype=np.int64)
        at = 0
        views = []
        for t in buf.tokens, buf.lengths, buf.index, buf.feat_lens, buf.flag:
            views.append(host[at : at + t.numel()].reshape(t.shape))
            at += t.numel()
        tok, lens, index, fl, flag = views
        tok[:rows, :width] = tokens
        lens[:] = 1
        lens[:rows] = lengths
        fl[:] = max(1, min(frames, self._mel_length(1)))
        fl[:rows] = feat_lens
        for i, (n, t) in enumerate(zip(lengths, feat_lens, strict=True)):
            index[i, :t] = nearest_indices(n, t)
        flag[0] = int(min(feat_lens) == frames)  # today's unpadded pass: plain GroupNorm
        device = buf.ints.device
        buf.ints.copy_(to_device(torch.from_numpy(host), device))  # one host-to-device copy, without a sync
        buf.emb.zero_()
        given = [i for i, e in enumerate(embeddings) if e is not None]
        if given:
            values = torch.stack([to_device(embeddings[i].reshape(-1), device, buf.emb.dtype) for i in given])
            buf.emb.index_copy_(0, lengths_tensor(given, device), values)

    def _run(self, buf: _Bucket) -> None:
        mu, mask, spks = front_core(
            self.flow,
            self._tables_now(buf.tokens.shape[1]),
            buf.tokens,
            buf.lengths,
            buf.index,
            buf.feat_lens,
            buf.flag[0] != 0,
            buf.emb,
        )
        buf.mu.copy_(mu)
        buf.mask.copy_(mask)
        buf.spks.copy_(spks)

    def _prime(self, buf: _Bucket) -> None:
        # The warm-up run before each capture (on the capture stream) also compiles a compiled encoder layer
        # (`compile_outside_graphs`) for this variant outside the capture.
        self._tables_now(buf.tokens.shape[1])  # before the capture: never built inside one
        buf.ints.zero_()  # a valid pass for the warm-up run: every row one token 0, one frame, no embedding
        buf.lengths.fill_(1)
        buf.feat_lens.fill_(1)
        buf.emb.zero_()
