"""The flow front's graph-safe core (`front_core`) and its bucketed runner (`GraphedFlowFront`) against today's
`FlowModel.begin_batch` (tiny_a, float32, CPU: `use_graphs=False` runs the runner's static-buffer path eagerly,
everything but the capture itself).

What is exact and what is not:
- `front_core` on begin_batch's own shapes: mu, mask and spks `torch.equal`, ragged rows, equal rows (today's plain
  GroupNorm, selected by the device flag), one row, speaker embeddings, the regulator padded to a frame bucket.
- `GraphedFlowFront` with `token_bucket=1` (rows padded to the batch bucket, frames to the ODE's frame bucket of the
  longest row) against begin_batch with `bucket_regulator` (the same frame padding): mu and mask `torch.equal`; spks
  equal on rows without a speaker embedding (the bias: GLM-4-Voice never passes one), within 1e-6 on rows with one
  when rows are padded (the speaker Linear's GEMM over more rows: measured 1.2e-7); through the whole decoder every
  ChunkResult field equal.
- `GraphedFlowFront` with the default 16-token bucket against the unbucketed begin_batch: the encoder's GEMMs and
  softmax run over longer rows, the regulator's convolutions and GroupNorm over more frames: within 1e-5 (mu,
  measured 1.4e-6); through the decoder (ODE, HiFT) mels within 1e-5, speech within 1e-4, HiFT sources within 1e-3
  (`_ATOL`).
"""

from __future__ import annotations

import copy
from dataclasses import fields, replace

import numpy as np
import pytest
import torch

from glm4voice_api.models.speech_decoder.chunks import ChunkResult
from glm4voice_api.models.speech_decoder.flow import FlowInput, FlowModel, mel_length, nearest_indices
from glm4voice_api.models.speech_decoder.flow_front_graphs import FlowFrontGraphConfig, GraphedFlowFront, front_core
from glm4voice_api.models.speech_decoder.flow_graphs import FlowGraphConfig
from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from tests.conftest import CONFORMANCE
from tests.models.decoder_rounds import decode_rounds

DECODER = CONFORMANCE / "tiny_a" / "speech_decoder"
pytestmark = pytest.mark.usefixtures("conformance")  # fails, never skips, without the goldens

CASES = {  # row token counts, rows with a speaker embedding
    "ragged": ([20, 33, 7], [1]),
    "ragged_five": ([20, 33, 7, 12, 5], [0, 4]),
    "equal": ([20, 20], []),
    "one_row": ([17], []),
    "one_row_embedding": ([26], [0]),
}


@pytest.fixture(scope="module")
def flow() -> FlowModel:
    return load_speech_decoder(DECODER).flow


def _items(case: str, spk_dim: int) -> list[FlowInput]:
    lengths, with_emb = CASES[case]
    rng = np.random.default_rng(len(lengths))
    g = torch.Generator().manual_seed(5)
    return [
        FlowInput(
            tokens=rng.integers(0, 16384, n),
            prompt_mel=torch.zeros(80, 0),
            embedding=torch.randn(spk_dim, generator=g) if i in with_emb else None,
        )
        for i, n in enumerate(lengths)
    ]


def _today(flow: FlowModel, items: list[FlowInput]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """begin_batch's (mu, mask, spks) as it hands them to the ODE (eager, or the graphs' `start`)."""
    seen = {}

    def record(z, mask, mu, spks, cond):
        seen.update(mu=mu, mask=mask, spks=spks)
        raise StopIteration

    target = flow.graphed if flow.graphed is not None else flow.decoder
    name = "start" if flow.graphed is not None else "prepare"
    setattr(target, name, record)
    try:
        with pytest.raises(StopIteration):
            flow.begin_batch(items)
    finally:
        delattr(target, name)
    return seen["mu"], seen["mask"], seen["spks"]


def _core_inputs(flow: FlowModel, items: list[FlowInput], frames: int) -> tuple[torch.Tensor, ...]:
    lengths = [len(it.tokens) for it in items]
    feat_lens = [mel_length(n, flow.cfg) for n in lengths]
    tokens = torch.zeros(len(items), max(lengths), dtype=torch.long)
    index = torch.zeros(len(items), frames, dtype=torch.long)
    emb = torch.zeros(len(items), flow.cfg.spk_embed_dim)
    for i, it in enumerate(items):
        tokens[i, : lengths[i]] = torch.from_numpy(it.tokens)
        index[i, : feat_lens[i]] = torch.from_numpy(nearest_indices(lengths[i], feat_lens[i]))
        if it.embedding is not None:
            emb[i] = it.embedding
    uniform = torch.tensor(min(feat_lens) == frames)
    return tokens, torch.tensor(lengths), index, torch.tensor(feat_lens), uniform, emb


@pytest.mark.parametrize("bucket_regulator", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_core_equals_begin_batch(flow: FlowModel, case: str, bucket_regulator: bool) -> None:
    flow = copy.deepcopy(flow)
    if bucket_regulator:  # the regulator padded to the ODE's frame bucket, as with `set_shape_buckets`
        flow.enable_graphs(FlowGraphConfig(frame_bucket=48), use_graphs=False)
        flow.bucket_regulator = True
    items = _items(case, flow.cfg.spk_embed_dim)
    want_mu, want_mask, want_spks = _today(flow, items)
    w = flow.input_embedding.weight
    for n in (max(len(it.tokens) for it in items), 512):  # tables of exactly L positions, and sliced from longer
        tables = flow.encoder.position_tables(n, w.device, w.dtype)
        with torch.inference_mode():
            mu, mask, spks = front_core(flow, tables, *_core_inputs(flow, items, want_mu.shape[-1]))
        assert torch.equal(mu, want_mu) and torch.equal(mask, want_mask) and torch.equal(spks, want_spks)


def _graphed_flow(flow: FlowModel, token_bucket: int) -> tuple[FlowModel, GraphedFlowFront]:
    flow = copy.deepcopy(flow)
    flow.enable_graphs(FlowGraphConfig(frame_bucket=48), use_graphs=False)
    front = flow.set_front_graphs(True, use_graphs=False)
    assert front is not None and flow.graphed_front is front
    front.config = replace(front.config, token_bucket=token_bucket)
    return flow, front


@pytest.mark.parametrize("token_bucket", [1, 16])
@pytest.mark.parametrize("case", sorted(CASES))
def test_graphed_front_eager_path(flow: FlowModel, case: str, token_bucket: int) -> None:
    """Rows padded to a batch bucket (3 -> 4, 5 -> 8), tokens to the token bucket, frames to the ODE's frame bucket
    of the padded token count, through the static buffers; against begin_batch without the runner."""
    graphed, front = _graphed_flow(flow, token_bucket)
    plain = copy.deepcopy(graphed)
    plain.set_front_graphs(False)
    plain.bucket_regulator = token_bucket == 1  # exact: the same frame padding as the runner's output
    items = _items(case, flow.cfg.spk_embed_dim)
    want = _today(plain, items)
    got = _today(graphed, items)
    feat_lens = [mel_length(len(it.tokens), flow.cfg) for it in items]
    assert got[0].shape[-1] == graphed.graphed.bucket(1, max(feat_lens))[1]  # the ODE's frame bucket
    assert torch.equal(got[1][..., : want[1].shape[-1]], want[1])
    assert not got[1][..., want[1].shape[-1] :].any() and not got[0][..., want[0].shape[-1] :].any()
    # spks: rows without an embedding get the bias exactly; the speaker Linear over the bucket's rows (3 -> 4) may
    # round a row with one differently (a GEMM of another row count).
    no_emb = [i for i in range(len(items)) if i not in CASES[case][1]]
    assert torch.equal(got[2][no_emb], want[2][no_emb])
    torch.testing.assert_close(got[2], want[2], rtol=0, atol=1e-6)
    if token_bucket == 1:
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    else:
        torch.testing.assert_close(got[0][..., : want[0].shape[-1]], want[0], rtol=0, atol=1e-5)
    key = front.bucket(len(items), max(len(it.tokens) for it in items))
    buf = front._buffers(key)
    assert buf.mu.shape[0] >= len(items) and torch.isfinite(buf.mu).all() and torch.isfinite(buf.spks).all()
    assert front.captures == 0 and front.warmup(32, 256) == 0  # nothing is captured on the CPU path


def test_buckets_and_fallbacks(flow: FlowModel) -> None:
    graphed, front = _graphed_flow(flow, 16)
    assert front.bucket(1, 10) == (1, 16, graphed.graphed.bucket(1, mel_length(16, flow.cfg))[1])
    assert front.bucket(3, 17)[:2] == (4, 32) and front.bucket(9, 256)[:2] == (16, 256)
    assert front.token_buckets(256) == list(range(16, 257, 16))
    graphed.graphed.set_batch_buckets([24, 8])
    assert front.bucket(9, 20)[0] == 24
    assert front.bucket(1, front.config.max_tokens + 1) is None  # past max_tokens: eager
    front.config = FlowFrontGraphConfig(max_tokens=32)
    items = _items("ragged", flow.cfg.spk_embed_dim)  # 33 tokens: past it, so begin_batch's eager front
    plain = copy.deepcopy(graphed)
    plain.set_front_graphs(False)
    assert all(torch.equal(a, b) for a, b in zip(_today(graphed, items), _today(plain, items), strict=True))
    assert not front._arenas  # never touched
    kept = graphed.set_front_graphs(True, use_graphs=False)
    assert graphed.set_front_graphs(False) is None and graphed.graphed_front is None
    assert graphed.set_front_graphs(True, use_graphs=False) is kept  # kept: its graphs are never destroyed
    graphed.graphed = None  # without the ODE's graphs the front is not used (and has no buckets)
    assert front.bucket(1, 10) is None and front.warmup(8, 64) == 0


_ATOL = {"speech": 1e-4, "hift_source": 1e-3, "cache_source": 1e-3}
"""With 16-token buckets (measured on tiny_a: mels 2.6e-6, speech 3.2e-5, sources 1.2e-4: HiFT's source is a sine of
the cumulated F0 phase, so an F0 rounding difference grows over a chunk's samples); mels within 1e-5."""


def _assert_results(a: list[ChunkResult], b: list[ChunkResult], exact: bool) -> None:
    for x, y in zip(a, b, strict=True):
        for f in fields(ChunkResult):
            if f.name == "request":
                continue
            u, v = getattr(x, f.name), getattr(y, f.name)
            if u is None or v is None:
                assert u is None and v is None, f.name
                continue
            u, v = torch.as_tensor(u), torch.as_tensor(v)
            assert u.shape == v.shape, f.name
            if exact:
                assert torch.equal(u, v), f.name
            else:
                torch.testing.assert_close(u, v, rtol=0, atol=_ATOL.get(f.name, 1e-5), msg=f.name)


@pytest.mark.parametrize("token_bucket", [1, 16])
def test_decoder_passes_with_front_graphs(token_bucket: int) -> None:
    """Streams of different lengths decoded pass by pass (first, later and last chunks) with the
    flow's front through `GraphedFlowFront` (eagerly) and through today's begin_batch: every ChunkResult field."""
    plain = load_speech_decoder(DECODER)
    plain.flow.enable_graphs(FlowGraphConfig(frame_bucket=48), use_graphs=False)
    plain.flow.bucket_regulator = token_bucket == 1  # the runner's frame padding: exact
    graphed = copy.deepcopy(plain)
    graphed.flow.bucket_regulator = False
    front = graphed.flow.set_front_graphs(True, use_graphs=False)
    front.config = replace(front.config, token_bucket=token_bucket)
    decode_rounds(plain, graphed, lambda a, b: _assert_results(a, b, exact=token_bucket == 1))
    assert front._arenas  # the passes went through the runner's static buffers
