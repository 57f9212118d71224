"""Shape buckets for the convolutions outside the flow's graphs (`SpeechDecoder.set_shape_buckets`): HiFT padded to a
multiple of 16 frames and the length regulator to the graphs' frame bucket. The padding is masked, so every row
decodes as without it: checked through the server's batched pass (fp32, tiny_a, ragged rows, a first chunk and a
later one with its cache), every mel value within 1e-4 and every sample within 1e-4 (float rounding of other
convolution shapes only)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from glm4voice_api.models.speech_decoder.flow_graphs import FlowGraphConfig
from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from tests.conftest import CONFORMANCE
from tests.models.test_compiled_parts import _decode

TINY = CONFORMANCE / "tiny_a"
pytestmark = pytest.mark.usefixtures("conformance")  # fails, never skips, without the goldens


def test_bucketed_shapes_decode_as_unbucketed() -> None:
    plain = load_speech_decoder(TINY / "speech_decoder")
    # The graphs' bucketing without graphs (CPU): passes padded to 48-frame buckets, as on a GPU.
    plain.flow.enable_graphs(FlowGraphConfig(frame_bucket=48), use_graphs=False)
    bucketed = copy.deepcopy(plain)
    bucketed.set_shape_buckets(True)
    assert bucketed.hift_frame_bucket == 16 and bucketed.flow.bucket_regulator and not plain.flow.bucket_regulator

    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, 16384, n) for n in (31, 36, 44)]
    want, got = _decode(plain, seqs, first=13), _decode(bucketed, seqs, first=13)
    for a, b in zip(want, got, strict=True):
        assert b.speech.shape == a.speech.shape
        np.testing.assert_allclose(b.mel.numpy(), a.mel.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(b.speech, a.speech, rtol=0, atol=1e-4)

    bucketed.set_shape_buckets(False)
    assert bucketed.hift_frame_bucket == 0 and not bucketed.flow.bucket_regulator


def test_bucketed_shapes_in_bf16_stay_as_close_to_float32_as_unbucketed() -> None:
    """bf16 (the GPU's dtype) on the CPU: other convolution shapes round differently, so the bound is against the
    float32 model: bucketed bf16 audio no further from it (RMS) than unbucketed bf16, plus a quarter (measured on
    tiny_a: 0.00303 both)."""
    import torch

    ref = load_speech_decoder(TINY / "speech_decoder")
    plain = load_speech_decoder(TINY / "speech_decoder", dtype=torch.bfloat16)
    for d in (ref, plain):
        d.flow.enable_graphs(FlowGraphConfig(frame_bucket=48), use_graphs=False)
    bucketed = copy.deepcopy(plain)
    bucketed.set_shape_buckets(True)
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, 16384, n) for n in (31, 36, 44)]
    want = np.concatenate([r.speech for r in _decode(ref, seqs, first=13)])

    def rms_from_ref(decoder) -> float:
        got = np.concatenate([r.speech for r in _decode(decoder, seqs, first=13)])
        return float(np.sqrt(np.mean((got - want) ** 2)))

    assert rms_from_ref(bucketed) <= 1.25 * rms_from_ref(plain)
