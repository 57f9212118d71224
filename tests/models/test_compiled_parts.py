"""The compiled parts outside the flow's graphs (compiled.py: HiFT's elementwise steps, the flow encoder's layers)
against the eager ones, through the server's own batched pass.

Compiling fuses kernels; it must not change what the parts compute beyond float rounding. Checked on the CPU
(inductor's C++ backend), fp32, tiny_a, three streams' chunks in one pass (ragged rows, so the masked blocks run):
every mel value within 1e-4 of the eager pass and every audio sample within 1e-3 (measured below 1e-5 and 1e-4).
After the load-time warm-up a pass of new shapes (other rows, other lengths; with shape buckets too) compiles
nothing.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from glm4voice_api.models.speech_decoder.compiled import (
    compile_outside_graphs,
    outside_graphs_compiled,
    uncompile_outside_graphs,
    warm_outside_graphs,
)
from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig
from tests.conftest import CONFORMANCE

TINY = CONFORMANCE / "tiny_a"
pytestmark = pytest.mark.usefixtures("conformance")  # fails, never skips, without the goldens


def _decode(decoder, seqs: list[np.ndarray], first: int | None = None) -> list:
    """Each sequence as one stream: its first `first` tokens in one pass (all rows), then the rest, final."""
    config = DecoderStreamConfig(schedule=(10,))
    streams = [decoder.open_stream(config=config) for _ in seqs]
    out = []
    for part in ((slice(0, first), False), (slice(first, None), True)) if first else ((slice(None), True),):
        reqs = [s.prepare(q[part[0]], final=part[1]) for s, q in zip(streams, seqs, strict=True)]
        for req in reqs:
            req.generator = torch.Generator().manual_seed(5)
        results = decoder.decode_batch(reqs)
        for s, r in zip(streams, results, strict=True):
            s.commit(r)
        out += results
    return out


def test_compiled_parts_equal_eager_and_compile_nothing_after_warm_up(monkeypatch) -> None:
    import torch._dynamo.utils
    import torch._inductor.config

    # One compile worker: inductor's pool would otherwise take every core from the tests running beside this one.
    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)
    eager = load_speech_decoder(TINY / "speech_decoder")
    compiled = copy.deepcopy(eager)
    compile_outside_graphs(compiled)
    assert outside_graphs_compiled(compiled) and not outside_graphs_compiled(eager)
    warm_outside_graphs(compiled, frames=40)
    assert all(layer._compiled_call_impl is not None for layer in compiled.flow.encoder.encoders)

    rng = np.random.default_rng(7)
    seqs = [rng.integers(0, 16384, n) for n in (30, 34, 41)]  # the second pass has ragged rows (masked blocks)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.compiler.set_stance("fail_on_recompile"):  # new rows and lengths: no compile at serving time
        got = _decode(compiled, seqs, first=13)
        single = _decode(compiled, seqs[:1])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before
    want = _decode(eager, seqs, first=13)
    for a, b in zip(want + _decode(eager, seqs[:1]), got + single, strict=True):
        np.testing.assert_allclose(b.mel.numpy(), a.mel.numpy(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(b.speech, a.speech, rtol=0, atol=1e-3)
    # With shape buckets (HiFT padded to 16 frames) every pass is masked, a single row's too: warmed up as well.
    for d in (eager, compiled):
        d.set_shape_buckets(True)
    with torch.compiler.set_stance("fail_on_recompile"):
        got = _decode(compiled, seqs[:1]) + _decode(compiled, seqs, first=13)
    for a, b in zip(_decode(eager, seqs[:1]) + _decode(eager, seqs, first=13), got, strict=True):
        np.testing.assert_allclose(b.speech, a.speech, rtol=0, atol=1e-3)
    uncompile_outside_graphs(compiled)
    assert not outside_graphs_compiled(compiled)


def test_compiled_parts_in_bf16_stay_as_close_to_float32_as_eager_bf16(monkeypatch) -> None:
    """bf16 (the GPU's dtype) on the CPU: the compiled steps round differently from eager bf16 (inductor computes
    bf16 elementwise chains in float32), so the bound is against the float32 model: compiled bf16 may be no further
    from it than eager bf16 is, plus a quarter (measured on tiny_a: HiFT audio RMS 0.0035 vs 0.0037 for eager bf16,
    the encoder's output max 0.031 vs 0.030)."""
    import torch._inductor.config

    from glm4voice_api.models.speech_decoder.hift_ragged import vocode_ragged

    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)
    ref = load_speech_decoder(TINY / "speech_decoder")
    eager = load_speech_decoder(TINY / "speech_decoder", dtype=torch.bfloat16)
    compiled = copy.deepcopy(eager)
    compile_outside_graphs(compiled)
    warm_outside_graphs(compiled, frames=40)
    gen = torch.Generator().manual_seed(1)
    mels = [torch.randn(80, n, generator=gen) - 5 for n in (120, 97, 111)]
    tokens = torch.randint(0, 16384, (2, 60), generator=gen)

    def run(decoder) -> tuple[torch.Tensor, torch.Tensor]:
        gens = [torch.Generator().manual_seed(i) for i in range(len(mels))]
        with torch.inference_mode():
            wav = vocode_ragged(decoder.hift, mels, [None] * 3, [None] * 3, gens)
            enc = decoder.flow.encode(tokens, torch.tensor([60, 45]))[1][0, :45].float()
        return torch.cat([w[0].reshape(-1) for w in wav]).float(), enc

    (wav_ref, enc_ref), (wav_e, enc_e), (wav_c, enc_c) = run(ref), run(eager), run(compiled)

    def rms(x: torch.Tensor) -> float:
        return float(x.pow(2).mean().sqrt())

    assert rms(wav_c - wav_ref) <= 1.25 * rms(wav_e - wav_ref)
    assert float((enc_c - enc_ref).abs().max()) <= 1.25 * float((enc_e - enc_ref).abs().max())
