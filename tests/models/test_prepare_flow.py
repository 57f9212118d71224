"""The server's flow preparation on CUDA (`pipeline.runtime._prepare_flow`): compile, capture, and the fallback.

Run on the CPU with the graph capture replaced (there is no CUDA here): a compile that fails while the buckets are
warmed up must leave a working, uncompiled decoder behind, not a server that cannot start.
"""

from __future__ import annotations

import os

import pytest

from glm4voice_api.config import Settings
from glm4voice_api.models.speech_decoder.flow_graphs import GraphedCFM
from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from glm4voice_api.pipeline.runtime import _prepare_flow
from tests.conftest import CONFORMANCE

pytestmark = pytest.mark.usefixtures("conformance")  # fails, never skips, without the goldens


@pytest.mark.parametrize("compile_fails", [False, True])
def test_compile_then_capture_and_the_fallback(monkeypatch, tmp_path, compile_fails: bool) -> None:
    decoder = load_speech_decoder(CONFORMANCE / "tiny_a" / "speech_decoder")
    estimator = decoder.flow.decoder.estimator
    warmups: list[bool] = []

    def warmup(self, max_batch, max_frames, like):  # stands in for the capture, which compiles on its first run
        warmups.append(estimator.blocks_compiled)
        if compile_fails and estimator.blocks_compiled:
            raise RuntimeError("inductor: no working C compiler")
        return 54

    monkeypatch.setattr(GraphedCFM, "warmup", warmup)
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    settings = Settings(cache_dir=tmp_path)
    _prepare_flow(decoder, settings, "cuda:0")
    assert decoder.flow.graphed is not None
    if compile_fails:
        assert warmups == [True, False]  # captured again, uncompiled
        assert not estimator.blocks_compiled
    else:
        assert warmups == [True]
        assert estimator.blocks_compiled
        estimator.uncompile_blocks()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path.resolve() / "inductor")


def test_no_compile_without_graphs_or_when_off(monkeypatch, tmp_path) -> None:
    decoder = load_speech_decoder(CONFORMANCE / "tiny_a" / "speech_decoder")
    monkeypatch.setattr(GraphedCFM, "warmup", lambda self, *a: 0)
    off = Settings(cache_dir=tmp_path, speech_decoder={"compile_blocks": False})
    _prepare_flow(decoder, off, "cuda:0")
    assert decoder.flow.graphed is not None and not decoder.flow.decoder.estimator.blocks_compiled
    decoder = load_speech_decoder(CONFORMANCE / "tiny_a" / "speech_decoder")
    _prepare_flow(decoder, Settings(cache_dir=tmp_path, speech_decoder={"cuda_graphs": False}), "cuda:0")
    assert decoder.flow.graphed is None and not decoder.flow.decoder.estimator.blocks_compiled
