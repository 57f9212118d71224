"""The bucketed flow runner (CUDA graphs on a GPU) must give each row what the eager, unpadded pass gives.

On the CPU the same bucket padding runs eagerly (`use_graphs=False`), so this checks everything but the capture
itself: frame padding to the bucket, batch padding to a power of two, and the explicit `padded=True` path.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.models.speech_decoder.flow_graphs import FlowGraphConfig, GraphedCFM
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
    runner = GraphedCFM(torch.nn.Identity(), FlowGraphConfig(frame_bucket=64))
    assert runner.bucket(1, 1) == (1, 64)
    assert runner.bucket(3, 64) == (4, 64)
    assert runner.bucket(5, 65) == (8, 128)
    assert runner.bucket(16, 1000) == (16, 1024)


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
