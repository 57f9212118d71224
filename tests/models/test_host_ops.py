"""What a decoder pass launches from Python, kept small and exact: a regression bound on the eager ops per row of a
pass (counted at dispatch, so the CPU count is the GPU's), and the caches behind it giving the values they replace.

Why a count and not a time: every eager op is a launch and a GIL round trip on the decoder's thread, and the per-row
ones grow with the batch (66 per steady-state row until 2026-12-05, 12 after `pass_io.py`); a timing test would be
flaky, a count is deterministic."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from glm4voice_api.models.speech_decoder.chunks import ChunkRequest
from glm4voice_api.models.speech_decoder.flow_encoder import block_causal_mask, rel_pos_embedding
from glm4voice_api.models.speech_decoder.hift import Snake, snake
from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from tests.conftest import CONFORMANCE

TINY = CONFORMANCE / "tiny_a"


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.n = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _steady_rows(decoder, rows: int) -> list[ChunkRequest]:
    """Later chunks of `rows` streams: a context, a held-back tail, a cache frame and cache samples each."""
    gen = torch.Generator().manual_seed(0)
    n = decoder.flow.cfg.output_size
    out = []
    for _ in range(rows):
        toks = torch.randint(0, decoder.flow.cfg.vocab_size, (60,), generator=gen).tolist()
        out.append(
            ChunkRequest(
                toks[40:],
                toks[:40],
                torch.randn(n, decoder.mel_frames(40), generator=gen) - 5,
                final=False,
                overlap_tail=torch.randn(n, 34, generator=gen) - 5,
                cache_mel=torch.randn(n, 1, generator=gen) - 5,
                cache_source=torch.randn(1, 256, generator=gen) * 0.01,
            )
        )
    return out


@pytest.mark.usefixtures("conformance")
def test_eager_ops_per_row_of_a_pass_stay_few() -> None:
    decoder = load_speech_decoder(TINY / "speech_decoder")
    counts = {}
    for rows in (1, 9):
        with torch.inference_mode():
            decoder.decode_batch(_steady_rows(decoder, rows))  # first-call caches (tables, Snake terms)
            mode = _Count()
            reqs = _steady_rows(decoder, rows)
            with mode:
                decoder.decode_batch(reqs)
        counts[rows] = sum(mode.n.values())
    per_row = (counts[9] - counts[1]) / 8
    # 12.25 on 2026-12-05 (3 draws, the noise and draws written into the batch, result views). 16: some headroom.
    assert per_row <= 16, f"{per_row} eager ops per row of a pass"


def test_snake_terms_are_computed_once_per_weights() -> None:
    act = Snake(8)
    with torch.no_grad():
        act.alpha.copy_(torch.rand(8) + 0.5)
    x = torch.randn(2, 8, 30)
    a = act.alpha.detach()[None, :, None]
    want = torch.addcmul(x, 1.0 / (a + 1e-9), torch.sin(x * a).square())  # the per-call formula
    assert torch.equal(act(x), want)
    assert act.terms()[1] is act.terms()[1]  # cached
    with torch.no_grad():
        act.alpha.mul_(2)  # new weights (a load copies in place): new terms
    a = act.alpha.detach()[None, :, None]
    assert torch.equal(act(x), torch.addcmul(x, 1.0 / (a + 1e-9), torch.sin(x * a).square()))
    act.double()
    assert act.terms()[0].dtype == torch.float64
    assert torch.equal(snake(x.double(), *act.terms()), act(x.double()))


@pytest.mark.usefixtures("conformance")
def test_position_tables_are_the_tables_of_the_length() -> None:
    encoder = load_speech_decoder(TINY / "speech_decoder").flow.encoder
    d, block = encoder.cfg.output_size, encoder.cfg.block_size
    for length in (3, 300, 700, 40):  # 700 grows the cached tables past their first size
        pos, mask = encoder.position_tables(length, torch.device("cpu"), torch.float32)
        assert torch.equal(pos, rel_pos_embedding(length, d))
        assert torch.equal(mask, block_causal_mask(length, block))


def test_snake_terms_follow_moves_and_loads() -> None:
    act = Snake(4)
    x = torch.randn(1, 4, 9)
    first = act.terms()
    act.load_state_dict({"alpha": torch.full((4,), 3.0)})
    assert not torch.equal(act.terms()[0], first[0]) and torch.equal(act.terms()[0].flatten(), torch.full((4,), 3.0))
    act.to(torch.float64)
    a = act.alpha.detach()[None, :, None]
    assert a.dtype == torch.float64 and act.terms()[1].dtype == torch.float64
    assert torch.equal(act(x.double()), snake(x.double(), a, 1.0 / (a + 1e-9)))


@pytest.mark.usefixtures("conformance")
def test_a_long_pass_builds_its_tables_without_keeping_them() -> None:
    from glm4voice_api.models.speech_decoder.flow_encoder import MAX_CACHED_TABLE

    encoder = load_speech_decoder(TINY / "speech_decoder").flow.encoder
    length = MAX_CACHED_TABLE + 3
    pos, mask = encoder.position_tables(length, torch.device("cpu"), torch.float32)
    assert pos.shape[1] == 2 * length - 1 and mask.shape == (length, length)
    assert all(n <= MAX_CACHED_TABLE for n, _, _ in encoder._tables.values())


@pytest.mark.usefixtures("conformance")
def test_a_stream_keeps_no_pass_alive() -> None:
    """A chunk's mel is a view of its pass's batch; an unbounded-context stream keeps a copy, not the batch."""
    from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig

    decoder = load_speech_decoder(TINY / "speech_decoder")
    gen = torch.Generator().manual_seed(5)
    streams = [decoder.open_stream(config=DecoderStreamConfig(max_prompt_tokens=None)) for _ in range(3)]
    tokens = torch.randint(0, 16384, (3, 40), generator=gen).tolist()
    reqs = [s.prepare(t) for s, t in zip(streams, tokens, strict=True)]
    while any(r is not None for r in reqs):
        live = [(s, r) for s, r in zip(streams, reqs, strict=True) if r is not None]
        with torch.inference_mode():
            results = decoder.decode_batch([r for _, r in live])
        for (s, _), res in zip(live, results, strict=True):
            s.commit(res)
        reqs = [s.prepare() for s in streams]
        assert any(len(s._mels) for s in streams)
        for s in streams:  # a built request joined the history: no view of a pass is left
            if s._inflight is not None:
                assert all(m._base is None for m in s._mels)
