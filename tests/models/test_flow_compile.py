"""The compiled flow estimator (`ConditionalDecoder.compile_blocks`, what a GPU server runs) against the eager one.

Compiling fuses kernels; it must not change what the blocks compute beyond float rounding. Checked on the CPU
(inductor's C++ backend) through the server's own path: bucket padding, the padded estimator, a batched pass.
Bound held (fp32): every mel value within 1e-4 of the eager pass (measured ~2e-6). On an H200 in bf16, compiled vs
uncompiled differs by at most 0.04-0.05 (absolute, mel values of magnitude ~1-10), the size of bf16's own rounding
(bench/results/gpu_decoder_compile_blocks.json).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from glm4voice_api.models.speech_decoder.flow_graphs import FlowGraphConfig
from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig
from tests.conftest import CONFORMANCE

TINY = CONFORMANCE / "tiny_a"
pytestmark = pytest.mark.usefixtures("conformance")  # fails, never skips, without the goldens


def _decode(decoder, seqs):
    streams = [decoder.open_stream(config=DecoderStreamConfig(schedule=(10,))) for _ in seqs]
    reqs = [s.prepare(q, final=True) for s, q in zip(streams, seqs, strict=True)]
    for req in reqs:
        req.generator = torch.Generator().manual_seed(5)
    return decoder.decode_batch(reqs)


def test_compiled_blocks_equal_eager(monkeypatch) -> None:
    import torch._dynamo.utils
    import torch._inductor.config

    # One compile worker: inductor's pool would otherwise take every core from the tests running beside this one.
    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)

    eager = load_speech_decoder(TINY / "speech_decoder")
    eager.flow.enable_graphs(FlowGraphConfig(frame_bucket=48), use_graphs=False)
    compiled = copy.deepcopy(eager)
    estimator = compiled.flow.decoder.estimator
    estimator.compile_blocks()
    assert estimator.blocks_compiled
    rng = np.random.default_rng(7)
    seqs = [rng.integers(0, 16384, n) for n in (10, 29, 41)]  # ragged rows: padded frames, masked GroupNorm
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for a, b in zip(_decode(eager, seqs), _decode(compiled, seqs), strict=True):
        np.testing.assert_allclose(b.mel.numpy(), a.mel.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(b.speech, a.speech, rtol=0, atol=1e-3)
    # Compiled per block class (transformer blocks; resnets per input width), not once per block.
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - before
    assert 0 < graphs <= 8
    estimator.uncompile_blocks()
    assert not estimator.blocks_compiled


def test_frame_major_blocks_equal_the_transposed_view() -> None:
    """`frame_major` (the transformer blocks on a contiguous [B, T, C] copy, bench/layout_probe.py) only moves memory:
    the same mel as the blocks on the transposed view, ragged rows included."""
    decoder = load_speech_decoder(TINY / "speech_decoder")
    decoder.flow.enable_graphs(FlowGraphConfig(frame_bucket=48), use_graphs=False)
    rng = np.random.default_rng(11)
    seqs = [rng.integers(0, 16384, n) for n in (10, 29, 41)]
    estimator = decoder.flow.decoder.estimator
    assert estimator.frame_major is True
    estimator.frame_major = False
    view = _decode(decoder, seqs)
    estimator.frame_major = True
    for a, b in zip(view, _decode(decoder, seqs), strict=True):
        np.testing.assert_allclose(b.mel.numpy(), a.mel.numpy(), rtol=0, atol=1e-6)
