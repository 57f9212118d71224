"""The bucketed flow runner (CUDA graphs on a GPU) must give each row what the eager, unpadded pass gives.

On the CPU the same bucket padding runs eagerly (`use_graphs=False`), so this checks everything but the capture
itself: frame padding to the bucket, batch padding to a batch bucket (powers of two by default), and the explicit `padded=True` path.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.models.speech_decoder.flow_graphs import FlowGraphConfig, GraphedCFM, _Captured, padded_batch
from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig
from tests.conftest import CONFORMANCE

TINY = CONFORMANCE / "tiny_a"
pytestmark = pytest.mark.usefixtures("conformance")  # fails, never skips, without the goldens


@pytest.fixture(scope="module")
def decoders() -> tuple[SpeechDecoder, SpeechDecoder]:
    eager = load_speech_decoder(TINY / "speech_decoder")
    bucketed = copy.deepcopy(eager)
    bucketed.flow.enable_graphs(FlowGraphConfig(frame_bucket=48), use_graphs=False)
    return eager, bucketed


def test_bucket_shapes() -> None:
    runner = GraphedCFM(torch.nn.Identity(), FlowGraphConfig(frame_bucket=64, small_frames=0))
    assert runner.bucket(1, 1) == (1, 64)
    assert runner.bucket(3, 64) == (4, 64)
    assert runner.bucket(5, 65) == (8, 128)
    assert runner.bucket(16, 1000) == (16, 1024)


def test_batch_buckets_between_the_powers_of_two() -> None:
    """`graph_batches` [.., 16, 24, 32]: 17-24 rows are padded to 24, not 32 (a padded row costs a real one's time
    in a large pass); beyond the last bucket, a power of two."""
    runner = GraphedCFM(torch.nn.Identity(), FlowGraphConfig(batch_buckets=(1, 2, 4, 8, 16, 24, 32)))
    assert [runner.bucket(n, 100)[0] for n in (1, 3, 9, 17, 22, 24, 25, 33)] == [1, 4, 16, 24, 24, 24, 32, 64]
    runner.set_batch_buckets([32, 12, 12, 4])  # sorted, distinct
    assert runner.batch_buckets == (4, 12, 32) and runner.bucket(1, 100)[0] == 4 and runner.bucket(9, 100)[0] == 12
    with pytest.raises(ValueError, match="positive"):
        runner.set_batch_buckets([0, 8])
    assert padded_batch(17) == 32 and padded_batch(17, (24,)) == 24


def test_warmup_captures_every_bucket_a_pass_can_be_padded_to(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows beyond the last bucket pad to a power of two: those sizes are captured too (else the first such pass
    would capture on a request's critical path)."""
    runner = GraphedCFM(torch.nn.Identity(), FlowGraphConfig(batch_buckets=(1, 2, 4, 8, 12, 16, 24), max_graphs=200))
    runner.cfm = type("Cfm", (), {"cfg": type("Cfg", (), {"output_size": 80})()})()
    captured: list[tuple[int, int]] = []
    monkeypatch.setattr(
        runner, "_capture", lambda key, like, mel: captured.append(key) or runner._graphs.setdefault(key, None)
    )
    runner.warmup(48, 100, torch.zeros(1))
    assert sorted({b for b, _ in captured}) == [1, 2, 4, 8, 12, 16, 24, 32, 64]


def test_small_frame_buckets_are_half_as_far_apart() -> None:
    """The default: 128-frame steps up to 512 frames (a reply's first chunks), 256-frame steps beyond."""
    runner = GraphedCFM(torch.nn.Identity())
    assert runner.bucket(1, 68) == (1, 128)  # a first chunk of 10 tokens
    assert runner.bucket(2, 179) == (2, 256)
    assert runner.bucket(3, 358) == (4, 384)
    assert runner.bucket(1, 513) == (1, 768)
    assert runner.frame_buckets(1764) == [128, 256, 384, 512, 768, 1024, 1280, 1536, 1792]


def test_bucketed_rows_equal_eager(decoders: tuple[SpeechDecoder, SpeechDecoder]) -> None:
    eager, bucketed = decoders
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, 16384, n) for n in (10, 23, 37)]  # 3 rows -> batch bucket 4, ragged frames
    outputs = []
    for dec in (eager, bucketed):
        streams = [dec.open_stream(config=DecoderStreamConfig(schedule=(10,))) for _ in seqs]
        reqs = [s.prepare(q, final=True) for s, q in zip(streams, seqs, strict=True)]
        for req in reqs:
            req.generator = torch.Generator().manual_seed(11)
        outputs.append(dec.decode_batch(reqs))
    for a, b in zip(*outputs, strict=True):
        assert a.mel.shape == b.mel.shape
        np.testing.assert_allclose(b.mel.numpy(), a.mel.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(b.speech, a.speech, rtol=0, atol=1e-3)


def test_rows_decode_the_same_in_any_batch_bucket(decoders: tuple[SpeechDecoder, SpeechDecoder]) -> None:
    """The same 3 rows padded to 4 (powers of two), to 3 (no padding row) and to 6: the same mel (the CUDA graphs'
    batch sizes are a live rule, `graph_batches`, so a change of buckets must not change what a listener hears)."""
    _, bucketed = decoders
    rng = np.random.default_rng(5)
    seqs = [rng.integers(0, 16384, n) for n in (12, 20, 31)]
    mels = []
    try:
        for buckets in ((1, 2, 4, 8), (1, 3), (6,)):
            bucketed.flow.graphed.set_batch_buckets(buckets)
            assert bucketed.batch_buckets == buckets
            streams = [bucketed.open_stream(config=DecoderStreamConfig(schedule=(10,))) for _ in seqs]
            reqs = [s.prepare(q, final=True) for s, q in zip(streams, seqs, strict=True)]
            for req in reqs:
                req.generator = torch.Generator().manual_seed(7)
            mels.append([r.mel.numpy() for r in bucketed.decode_batch(reqs)])
    finally:
        bucketed.flow.graphed.set_batch_buckets(FlowGraphConfig().batch_buckets)
    for other in mels[1:]:
        for a, b in zip(mels[0], other, strict=True):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)


def test_interleaved_solves_keep_their_own_state(decoders: tuple[SpeechDecoder, SpeechDecoder]) -> None:
    """A solve started between two steps of another, in the same bucket, gets buffers of its own (the first one's
    hold its ODE state): both equal their solves run alone. The bucket's buffers stand in for a captured graph's."""
    eager, _ = decoders
    cfm = eager.flow.decoder
    runner = GraphedCFM(cfm, FlowGraphConfig(frame_bucket=48), use_graphs=True)
    gen = torch.Generator().manual_seed(4)

    def inputs(frames: int) -> tuple[torch.Tensor, ...]:
        mu, z, cond = (torch.randn(2, 80, frames, generator=gen) for _ in range(3))
        return z, torch.ones(2, 1, frames), mu, torch.randn(2, 80, generator=gen), cond

    first, second = inputs(40), inputs(44)  # one bucket: (2, 48)
    key = runner.bucket(2, 40)
    runner._graphs[key] = _Captured(*key, first[2], 80)  # as if captured (no graph on a CPU: steps run eagerly)
    run_a = runner.start(*first)
    assert run_a.step() and run_a.step()
    run_b = runner.start(*second)  # the bucket is busy with run_a's state
    assert run_a._captured is runner._graphs[key] and run_b._captured is not run_a._captured
    while run_b.step():
        pass
    got_b = run_b.result()
    while run_a.step():
        pass
    got_a = run_a.result()
    with torch.inference_mode():
        for got, args in ((got_a, first), (got_b, second)):
            np.testing.assert_allclose(got.numpy(), cfm(*args).numpy(), rtol=0, atol=1e-4)
    assert runner.start(*first)._captured is runner._graphs[key]  # freed again once run_a's result was taken


def test_beside_the_llm_a_bucket_left_out_runs_eagerly_instead_of_being_captured(
    decoders: tuple[SpeechDecoder, SpeechDecoder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside vLLM's model, a capture while serving could kill its engine (the default generator in capture mode while
    the LLM samples: pipeline/decoder_rules.no_captures_on_first_use): a pass in a bucket the warm-up left out runs
    eagerly, with the same values."""
    from types import SimpleNamespace

    from glm4voice_api.pipeline.decoder_rules import no_captures_on_first_use

    eager, _ = decoders
    cfm = eager.flow.decoder
    runner = GraphedCFM(cfm, FlowGraphConfig(frame_bucket=48), use_graphs=True)
    tried = []
    monkeypatch.setattr(runner, "_capture", lambda *a: tried.append(a))  # a CPU cannot capture: any call is a bug
    hift = SimpleNamespace(capture_on_first_use=True)
    decoder = SimpleNamespace(flow=SimpleNamespace(graphed=runner, graphed_front=None), hift_graphs=hift)
    no_captures_on_first_use(decoder)  # type: ignore[arg-type]
    assert not runner.capture_on_first_use and not hift.capture_on_first_use
    gen = torch.Generator().manual_seed(5)
    mu, z, cond = (torch.randn(1, 80, 40, generator=gen) for _ in range(3))
    args = (z, torch.ones(1, 1, 40), mu, torch.randn(1, 80, generator=gen), cond)
    got = runner(*args)
    assert tried == [] and len(runner._graphs) == 0
    with torch.inference_mode():
        np.testing.assert_allclose(got.numpy(), cfm(*args).numpy(), rtol=0, atol=1e-4)
