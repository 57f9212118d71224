"""The batched end of a decoder pass (`pass_io.stage_pass`, `SpeechDecoder._end_batch_batched`) against the
row-by-row code it replaces (`_crossfade_and_trim`, `_finish`): every value bit for bit, for every kind of row a
pass holds (a first chunk, a later one, a last one, a final flush without new tokens, a one-chunk reply)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glm4voice_api.models.speech_decoder.chunks import ChunkRequest
from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from glm4voice_api.models.speech_decoder.pass_io import gather_rows, stage_pass
from tests.conftest import CONFORMANCE

TINY = CONFORMANCE / "tiny_a"
pytestmark = pytest.mark.usefixtures("conformance")


def _rows(decoder, rng: torch.Generator) -> tuple[list[ChunkRequest], torch.Tensor, dict[int, tuple[int, int, int]]]:
    """Requests of every kind and a flow output for the ones with new tokens (padded, rows in another order)."""
    n = decoder.flow.cfg.output_size

    def mel(frames: int) -> torch.Tensor:
        return torch.randn(n, frames, generator=rng) - 5

    kinds = [  # (new frames or None, final, with tail, with cache)
        (60, False, False, False),  # a stream's first chunk
        (120, False, True, True),  # a later chunk
        (50, True, True, True),  # the last chunk
        (None, True, True, True),  # a final flush: no new tokens, the held-back tail vocoded as it is
        (40, True, False, False),  # a one-chunk reply
        (35, False, True, True),  # a short chunk: its tail overlaps its crossfaded head
    ]
    requests, spans, width = [], {}, 0
    flow_rows = [i for i, k in enumerate(kinds) if k[0] is not None][::-1]
    starts = {i: 7 + 3 * i for i in flow_rows}
    width = max(starts[i] + kinds[i][0] for i in flow_rows) + 5
    x = torch.randn(len(flow_rows), n, width, generator=rng)
    for f, i in enumerate(flow_rows):
        spans[i] = (f, starts[i], starts[i] + kinds[i][0])
    for _new, final, tail, cache in kinds:
        requests.append(
            ChunkRequest(
                tokens=[1],
                prompt_tokens=[],
                prompt_mel=mel(0),
                final=final,
                overlap_tail=mel(34) if tail else None,
                cache_mel=mel(1) if cache else None,
                cache_source=torch.randn(1, 256, generator=rng) * 0.1 if cache else None,
            )
        )
    return requests, x, spans


@pytest.mark.parametrize("bucket", [0, 16])
def test_stage_pass_is_the_row_by_row_staging(bucket: int) -> None:
    decoder = load_speech_decoder(TINY / "speech_decoder")
    requests, x, spans = _rows(decoder, torch.Generator().manual_seed(0))
    c = decoder.consts
    window = decoder._window(decoder.device)
    st = stage_pass(requests, x, spans, window, c.mel_overlap_len, c.mel_cache_len, x.shape[1], bucket)
    assert st.hift_mel.shape[-1] % (bucket or 1) == 0
    for i, r in enumerate(requests):
        f, a, b = spans.get(i, (None, 0, 0))
        old = decoder._crossfade_and_trim(r, None if f is None else x[f, :, a:b])
        assert torch.equal(st.raw[i], old.raw)
        assert torch.equal(st.mel[i], old.mel)
        if r.final:
            assert st.tail[i] is None and st.cache_mel[i] is None
        else:
            assert torch.equal(st.tail[i], old.tail)
            assert torch.equal(st.cache_mel[i], old.mel[:, -c.mel_cache_len :])
        j = st.hift_rows.index(i)
        n = old.hift_mel.shape[1]
        assert st.hift_lengths[j] == n
        assert torch.equal(st.hift_mel[j, :, :n], old.hift_mel)
        assert not st.hift_mel[j, :, n:].any()  # HiFT's padding is zero


def test_batched_end_of_pass_is_the_row_by_row_one() -> None:
    """The whole end of a pass (HiFT included) through the batched path and through the row-by-row staging with the
    same ragged HiFT pass: the same audio, mels, tails and caches, bit for bit."""
    from glm4voice_api.models.speech_decoder.hift_ragged import vocode_ragged

    decoder = load_speech_decoder(TINY / "speech_decoder")
    requests, x, spans = _rows(decoder, torch.Generator().manual_seed(1))

    def gens() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(42 + i) for i in range(len(requests))]

    got = decoder._end_batch(requests, gens(), x, spans)
    staged = [
        decoder._crossfade_and_trim(r, x[spans[i][0], :, spans[i][1] : spans[i][2]] if i in spans else None)
        for i, r in enumerate(requests)
    ]
    g = gens()
    vocoded = vocode_ragged(
        decoder.hift, [s.hift_mel for s in staged], [r.cache_source for r in requests], [None] * len(requests), g
    )
    for r, s, (wav, src), res in zip(requests, staged, vocoded, got, strict=True):
        want = decoder._finish(r, s, wav, src)
        np.testing.assert_array_equal(res.speech, want.speech.numpy())
        assert torch.equal(res.hift_source, want.hift_source)
        for name in ("mel", "flow_mel", "overlap_tail", "cache_mel", "cache_source"):
            a, b = getattr(res, name), getattr(want, name)
            assert (a is None and b is None) or torch.equal(a, b), name


def test_short_chunks_fail_with_the_row_by_row_messages() -> None:
    decoder = load_speech_decoder(TINY / "speech_decoder")
    requests, x, spans = _rows(decoder, torch.Generator().manual_seed(2))
    c = decoder.consts
    window = decoder._window(decoder.device)
    f, a, _ = spans[1]
    with pytest.raises(ValueError, match="fewer than the 34-frame crossfade"):
        stage_pass(requests, x, {**spans, 1: (f, a, a + 20)}, window, 34, 1, x.shape[1])
    first = [requests[0]]
    f, a, _ = spans[0]
    with pytest.raises(ValueError, match="more than 34 are needed"):
        stage_pass(first, x, {0: (f, a, a + 34)}, window, c.mel_overlap_len, c.mel_cache_len, x.shape[1])


def test_gather_rows() -> None:
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10)
    got = gather_rows(x, [1, 0, 1], [4, 0, 7], 3)
    want = torch.stack([x[1, :, 4:7], x[0, :, 0:3], x[1, :, 7:10]])
    assert torch.equal(got, want)
