"""HiFT's graph-safe core (`hift_core.py`) and its bucketed runner (`GraphedHiFT`) against `vocode_padded`.

On the CPU `use_graphs=False` runs the runner's static-buffer path eagerly: everything but the capture itself.

What is exact and what is not:
- `hift_core` on the same padded batch as `vocode_padded`: `torch.equal` (the same ops on the same shapes; masks of
  ones and the `torch.where` cache splice change no value).
- `GraphedHiFT` with `frame_bucket=1` (rows padded to the batch bucket only): `torch.equal` on every row's samples.
- `GraphedHiFT` with frames padded to 64 (the default): the convolutions and the phase cumsum run on longer inputs,
  so a backend may round differently: within 1e-5 (measured ~1e-7 on the CPU).
- Through the decoder (`SpeechDecoder.set_hift_graphs`): mels, tails and cache mels equal (HiFT does not touch them);
  speech, HiFT sources and cache sources equal with `frame_bucket=1`, within 1e-5 with 64.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from glm4voice_api.models.speech_decoder.hift import HiFTConfig, HiFTGenerator
from glm4voice_api.models.speech_decoder.hift_core import draw_rows, hift_core
from glm4voice_api.models.speech_decoder.hift_graphs import GraphedHiFT, HiFTGraphConfig
from glm4voice_api.models.speech_decoder.hift_ragged import vocode_padded
from glm4voice_api.models.speech_decoder.loader import load_hift, load_speech_decoder
from glm4voice_api.models.speech_decoder.yaml_config import load_decoder_yaml
from tests.conftest import CONFORMANCE
from tests.models.decoder_rounds import decode_rounds

TINY = CONFORMANCE / "tiny_a"
DECODER = TINY / "speech_decoder"
# conformance: fails, never skips, without the goldens; one_thread: tests/models/conftest.py
pytestmark = pytest.mark.usefixtures("conformance", "one_thread")

CASES = {  # (row lengths, padded width, cache widths per row (0: none))
    "ragged": ([20, 33, 7], 33, [0, 256, 256]),
    "ragged_padded": ([20, 33, 7, 12, 5], 40, [256, 0, 256, 256, 0]),
    "equal": ([20, 20], 20, [256, 256]),
    "one_row": ([17], 17, [0]),
    "one_row_cached": ([17], 17, [256]),
    "short_caches": ([20, 9], 20, [100, 40]),
}


@pytest.fixture(scope="module")
def hift() -> HiFTGenerator:
    cfg = HiFTConfig.from_yaml(load_decoder_yaml(DECODER / "config.yaml")["hift"])
    return load_hift(torch.load(DECODER / "hift.pt", weights_only=True), cfg)


def _inputs(case: str) -> tuple[torch.Tensor, list[int], list[torch.Tensor | None], list[int]]:
    lengths, width, caches = CASES[case]
    g = torch.Generator().manual_seed(0)
    mel = torch.zeros(len(lengths), 80, width)
    for b, n in enumerate(lengths):
        mel[b, :, :n] = torch.randn(80, n, generator=g) - 4
    cache = [None if w == 0 else torch.rand(1, 1, w, generator=g) - 0.5 for w in caches]
    return mel, lengths, cache, [11 + b for b in range(len(lengths))]


def _gens(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("case", sorted(CASES))
def test_core_equals_vocode_padded(hift: HiFTGenerator, case: str) -> None:
    mel, lengths, caches, seeds = _inputs(case)
    want_wav, want_src = vocode_padded(hift, mel, lengths, caches, [None] * len(lengths), _gens(seeds))
    batch, h1, n = len(lengths), hift.m_source.harmonic_num + 1, mel.shape[-1] * hift.upsample_factor
    phase_u, noise = torch.zeros(batch, h1, 1), torch.zeros(batch, h1, n)
    draw_rows(hift, _gens(seeds), [t * hift.upsample_factor for t in lengths], phase_u, noise)
    cache, cache_len = torch.zeros(batch, 256), torch.zeros(batch, dtype=torch.long)
    for b, c in enumerate(caches):
        if c is not None:
            cache[b, : c.shape[-1]], cache_len[b] = c.reshape(-1), c.shape[-1]
    with torch.inference_mode():
        wav, src = hift_core(hift, mel, torch.tensor(lengths), phase_u, noise, cache, cache_len)
    assert torch.equal(wav, want_wav)
    assert torch.equal(src, want_src)


@pytest.mark.parametrize("frame_bucket", [1, 64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_graphed_hift_eager_path(hift: HiFTGenerator, case: str, frame_bucket: int) -> None:
    """Rows padded to a batch bucket (5 -> 8, 3 -> 4) and frames to the frame bucket, through the static buffers."""
    mel, lengths, caches, seeds = _inputs(case)
    runner = GraphedHiFT(hift, HiFTGraphConfig(frame_bucket=frame_bucket), use_graphs=False)
    want_wav, want_src = vocode_padded(hift, mel, lengths, caches, [None] * len(lengths), _gens(seeds))
    wav, src = runner(mel, lengths, caches, _gens(seeds))
    assert wav.shape == want_wav.shape and src.shape == want_src.shape
    for b, t in enumerate(lengths):
        n = t * hift.upsample_factor
        if frame_bucket == 1:
            assert torch.equal(wav[b, :n], want_wav[b, :n])
            assert torch.equal(src[b, :, :n], want_src[b, :, :n])
        else:
            torch.testing.assert_close(wav[b, :n], want_wav[b, :n], rtol=0, atol=1e-5)
            torch.testing.assert_close(src[b, :, :n], want_src[b, :, :n], rtol=0, atol=1e-5)
    bucket = runner._buffers(runner.bucket(len(lengths), mel.shape[-1]))
    assert torch.isfinite(bucket.wav).all() and torch.isfinite(bucket.source).all()  # padding rows too
    assert runner.captures == 0 and runner.warmup(32, 1088) == 0  # nothing is captured on the CPU path


def test_buckets_and_fallbacks(hift: HiFTGenerator) -> None:
    runner = GraphedHiFT(hift, use_graphs=False)
    assert runner.bucket(1, 1) == (1, 64) and runner.bucket(3, 65) == (4, 128) and runner.bucket(17, 1076) == (32, 1088)
    assert len(runner.frame_buckets(1076)) == 17
    runner.set_batch_buckets([24, 8])
    assert runner.bucket(9, 64) == (24, 64)
    mel, lengths, _, seeds = _inputs("ragged")
    wide = [torch.rand(1, 1, 300)] * 3  # wider than the static cache buffer: `vocode_padded`, same values
    got = runner(mel, lengths, wide, _gens(seeds))
    want = vocode_padded(hift, mel, lengths, wide, [None] * 3, _gens(seeds))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(ValueError, match="cache_source has"):
        runner(mel, lengths, [None, None, torch.rand(1, 1, 7 * 256 + 1)], _gens(seeds))
    with pytest.raises(ValueError, match="at least one mel frame"):
        runner(mel, [20, 0, 7], [None] * 3, _gens(seeds))


def test_buckets_past_the_work_cap_run_eagerly_without_buffers(hift: HiFTGenerator) -> None:
    """Graphs only where they pay (`max_rows_frames`): a larger pass runs `vocode_padded` unpadded, with no static
    buffers (their pool ran the GPU out of memory beside vLLM, H100 2026-12-05), and warm-up captures none of them."""
    runner = GraphedHiFT(hift, HiFTGraphConfig(max_rows_frames=4 * 64), use_graphs=False)
    mel, lengths, caches, seeds = _inputs("ragged")  # 3 rows -> 4 x 64 frames: at the cap, static buffers
    runner(mel, lengths, caches, _gens(seeds))
    assert runner._graphable(runner.bucket(3, 33)) and not runner._graphable(runner.bucket(5, 33))
    assert not runner._graphable(runner.bucket(1, 300))
    mel, lengths, caches, seeds = _inputs("ragged_padded")  # 5 rows -> 8 x 64 frames: past the cap
    got = runner(mel, lengths, caches, _gens(seeds))
    want = vocode_padded(hift, mel, lengths, caches, [None] * 5, _gens(seeds))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not runner._has_arena(runner._sizes(runner.bucket(5, 40))[0], 0)  # no buffers were made for it


def _assert_results(a: list, b: list, exact: bool) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.speech.shape == y.speech.shape
        if exact:
            np.testing.assert_array_equal(x.speech, y.speech)
        else:
            np.testing.assert_allclose(x.speech, y.speech, rtol=0, atol=1e-5)
        for name in ("mel", "flow_mel", "overlap_tail", "cache_mel"):  # HiFT does not touch these: always equal
            u, v = getattr(x, name), getattr(y, name)
            assert (u is None and v is None) or torch.equal(u, v), name
        for name in ("hift_source", "cache_source"):
            u, v = getattr(x, name), getattr(y, name)
            if u is None or v is None:
                assert u is None and v is None, name
            elif exact:
                assert torch.equal(u, v), name
            else:
                torch.testing.assert_close(u, v, rtol=0, atol=1e-5)


@pytest.mark.parametrize("frame_bucket", [1, 64])
def test_decoder_passes_with_hift_graphs(frame_bucket: int) -> None:
    """Streams of different lengths decoded pass by pass (first, later and last chunks, an injected source) with
    HiFT through `GraphedHiFT` (eagerly) and through `vocode_padded`: every ChunkResult field."""
    plain = load_speech_decoder(DECODER)
    graphed = copy.deepcopy(plain)
    runner = graphed.set_hift_graphs(True, use_graphs=False)
    assert runner is not None and graphed.hift_graphs is runner and plain.hift_graphs is None
    runner.config = replace(runner.config, frame_bucket=frame_bucket)
    tokens = decode_rounds(plain, graphed, lambda a, b: _assert_results(a, b, exact=frame_bucket == 1))
    assert runner._arenas  # the passes went through the runner's static buffers
    # An injected source in the pass: the whole pass through `vocode_padded`, as without graphs.
    reqs = {d: [d.offline_request(tokens[:20]), d.offline_request(tokens[:30])] for d in (plain, graphed)}
    source = torch.rand(1, 1, plain.mel_frames(20) * plain.hop_length, generator=torch.Generator().manual_seed(4))
    for d in (plain, graphed):
        reqs[d][0].source = source
    _assert_results(plain.decode_batch(reqs[plain]), graphed.decode_batch(reqs[graphed]), exact=True)
    assert graphed.set_hift_graphs(False) is None and graphed.hift_graphs is None
    assert graphed.set_hift_graphs(True, use_graphs=False) is runner  # kept: its graphs are never destroyed


def test_end_of_pass_with_every_kind_of_row() -> None:
    """`test_pass_io`'s pass (a first chunk, later ones, a last one, a final flush, a one-chunk reply) through the
    graph runner's padded path, frames unpadded: bit for bit the default path."""
    from tests.models.test_pass_io import _rows

    plain = load_speech_decoder(DECODER)
    graphed = copy.deepcopy(plain)
    graphed.set_hift_graphs(True, use_graphs=False).config = HiFTGraphConfig(frame_bucket=1)
    requests, x, spans = _rows(plain, torch.Generator().manual_seed(1))

    def gens() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(42 + i) for i in range(len(requests))]

    _assert_results(plain._end_batch(requests, gens(), x, spans), graphed._end_batch(requests, gens(), x, spans), True)


def test_a_capture_that_runs_out_of_device_memory_degrades_to_eager(hift: HiFTGenerator, monkeypatch, caplog) -> None:
    """The third capture fails as cuBLAS did beside vLLM (H100, 2026-12-05): the two graphs made are kept, nothing
    more is captured, and every pass still runs (eagerly through the static buffers), with an error logged once."""
    runner = GraphedHiFT(hift, HiFTGraphConfig(max_rows_frames=1 << 20), use_graphs=False)
    runner.use_graphs = True  # capture logic on the CPU: `_capture` below stands in for the CUDA capture
    made: list = []

    def capture(key):
        if len(made) == 2:
            raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")
        buf = runner._buffers(key)
        runner._graphs[key] = buf
        made.append(key)
        return buf

    monkeypatch.setattr(runner, "_capture", capture)
    assert runner.warmup(4, 128) == 2 and "CUBLAS_STATUS_ALLOC_FAILED" in (runner.capture_failed or "")
    assert caplog.text.count("ran the device out of memory") == 1 and "out of device memory" in caplog.text
    mel, lengths, caches, seeds = _inputs("ragged")
    got = runner(mel, lengths, caches, _gens(seeds))  # a bucket never captured: eager, same values
    runner.use_graphs = False
    want = runner(mel, lengths, caches, _gens(seeds))
    assert torch.equal(got[0], want[0]) and len(made) == 2

    other = GraphedHiFT(hift, use_graphs=False)
    other.use_graphs = True
    monkeypatch.setattr(other, "_capture", lambda key: (_ for _ in ()).throw(RuntimeError("a shape bug")))
    with pytest.raises(RuntimeError, match="a shape bug"):  # any other failure is not swallowed
        other.warmup(1, 64)


def test_out_of_memory_is_recognised_through_the_failed_capture_end() -> None:
    """A capture's end fails with its own message after an allocation inside it did: the cause is in the chain."""
    from glm4voice_api.models.speech_decoder.graph_buckets import _out_of_memory

    def raised_while_handling(inner: BaseException) -> RuntimeError:
        try:
            try:
                raise inner
            except RuntimeError:
                raise RuntimeError("operation failed due to a previous error during capture") from None
        except RuntimeError as exc:
            exc.__context__ = inner  # `from None` only hides it from tracebacks; keep the link as torch's exit does
            return exc

    assert _out_of_memory(raised_while_handling(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED")))
    assert _out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert _out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_NOT_INITIALIZED when calling `cublasCreate`"))
    assert not _out_of_memory(raised_while_handling(RuntimeError("a shape bug")))


def test_max_rows_sends_larger_passes_to_the_eager_path(hift: HiFTGenerator) -> None:
    """`max_rows` (the served `hift_graph_rows`, 1): a pass of more rows runs `vocode_padded` itself (no static buffers,
    no row padding), one row still the bucketed path; both give the same samples as `vocode_padded`."""
    runner = GraphedHiFT(hift, HiFTGraphConfig(frame_bucket=1, max_rows=1), use_graphs=False)
    assert runner._graphable(runner.bucket(1, 64)) and not runner._graphable(runner.bucket(2, 64))
    for case in ("one_row", "ragged"):
        mel, lengths, caches, seeds = _inputs(case)
        want, _ = vocode_padded(hift, mel, lengths, caches, [None] * len(lengths), _gens(seeds))
        got, _ = runner(mel, lengths, caches, _gens(seeds))
        for b, n in enumerate(lengths):
            assert torch.equal(got[b, : n * hift.upsample_factor], want[b, : n * hift.upsample_factor])
