"""The speech tokenizer's graph buckets (models/speech_tokenizer/graphs.py): padding a pass to a bucket's rows and
frames keeps the reference's tokens. CPU: the buckets' buffers run eagerly (`use_graphs=False`); the graphs' replay
itself is checked on a GPU (bench/results/GPU.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glm4voice_api.models.speech_tokenizer.graphs import EncoderGraphConfig, GraphedEncoder
from glm4voice_api.models.speech_tokenizer.loader import load_speech_tokenizer
from tests.conftest import CONFORMANCE

TINY_A = CONFORMANCE / "tiny_a" / "speech_tokenizer"
GOLDEN = CONFORMANCE / "tiny_a" / "golden" / "tokenizer.npz"

pytestmark = pytest.mark.usefixtures("conformance")  # fails, never skips, without the goldens


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def waves(golden: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [golden[f"wav{i}_pcm16"].astype(np.float32) / 32768 for i in range(3)]


@pytest.mark.parametrize("frame_bucket", [200, 48])
def test_padded_buckets_keep_the_reference_tokens(golden: dict, waves: list[np.ndarray], frame_bucket: int) -> None:
    tokenizer = load_speech_tokenizer(TINY_A)
    # Small buckets so that short clips, a batch of three and the 35 s clip's two windows all pad rows and frames.
    config = EncoderGraphConfig(frame_bucket=frame_bucket, max_rows=4, multi_row_frames=3000)
    assert tokenizer.use_graphs(config, eager=True) == 0  # no graphs: the same buffers, run eagerly
    for i, wav in enumerate(waves):
        assert tokenizer.tokenize(wav, 16000) == golden[f"tokens_single_{i}"].tolist(), f"input {i}"
    batched = tokenizer.tokenize_batch([(wav, 16000) for wav in waves])  # 4 windows: a bucket of 4 rows
    for i, tokens in enumerate(batched):
        assert tokens == golden[f"tokens_batched_{i}"].tolist(), f"batched input {i}"


def test_added_frames_leave_the_quantizer_inputs_unchanged(waves: list[np.ndarray]) -> None:
    tokenizer = load_speech_tokenizer(TINY_A)
    features, mask = tokenizer.log_mel([waves[0]])  # 136 frames: 17 tokens
    model = tokenizer.model
    with torch.inference_mode():
        plain = model(features, mask)
        padded = model(torch.nn.functional.pad(features, (0, 64)), torch.nn.functional.pad(mask, (0, 64)))
    assert padded.token_ids.shape[1] == 25 and torch.equal(padded.token_ids[:, :17], plain.token_ids)
    torch.testing.assert_close(padded.pre_vq[:, :17], plain.pre_vq, atol=1e-5, rtol=0)


def test_buckets() -> None:
    model = load_speech_tokenizer(TINY_A).model
    graphs = GraphedEncoder(model, use_graphs=False)
    assert (
        graphs.bucket(1, 136) == (1, 200) and graphs.bucket(3, 200) == (4, 200) and graphs.bucket(5, 2960) == (8, 3000)
    )
    assert graphs.bucket(9, 136) is None and graphs.bucket(1, 3008) is None  # eager: too many rows, past 30 s
    with pytest.raises(ValueError, match="whole number of tokens"):
        GraphedEncoder(model, EncoderGraphConfig(frame_bucket=100))
    assert GraphedEncoder(model, use_graphs=False).warmup() == 0  # on the CPU: nothing captured
