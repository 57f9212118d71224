"""SpeechDecoder: loading, offline and streaming token2wav (PR #86) against tiny_a goldens, batching, voices."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.models.speech_decoder.chunks import Voice
from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.models.speech_decoder.loader import load_speech_decoder
from glm4voice_api.models.speech_decoder.stream import DecoderStreamConfig, StreamClosedError
from glm4voice_api.models.speech_decoder.yaml_config import load_decoder_yaml
from glm4voice_api.random_checkpoints.speech_decoder import write_tiny_speech_decoder
from tests.conftest import CONFORMANCE

TINY = CONFORMANCE / "tiny_a"
# conformance: fails, never skips, without the goldens; one_thread: tests/models/conftest.py
pytestmark = pytest.mark.usefixtures("conformance", "one_thread")
CHUNKS = [("main_chunk0", 0, 10, False), ("pr86_chunk1", 10, 30, False), ("pr86_chunk2", 30, 57, True)]


@pytest.fixture(scope="module")
def dec() -> SpeechDecoder:
    return load_speech_decoder(TINY / "speech_decoder")


@pytest.fixture(scope="module")
def g() -> dict[str, np.ndarray]:
    with np.load(TINY / "golden" / "stream.npz") as data:
        return dict(data)


def _pr86_speech(g: dict) -> np.ndarray:
    return np.concatenate([g[f"{name}_speech"][0] for name, *_ in CHUNKS])


# -- reference conformance ------------------------------------------------------------------------------


def test_streaming_matches_pr86_with_injected_noise(dec: SpeechDecoder, g: dict) -> None:
    stream = dec.open_stream()
    tokens = g["tokens57"]
    for name, start, end, final in CHUNKS:
        req = stream.prepare(tokens[start:end], final=final)
        assert req is not None
        assert (len(req.prompt_tokens), req.prompt_mel.shape[1]) == (
            int(g[f"{name}_prompt_token_len"]),
            int(g[f"{name}_prompt_feat_len"]),
        )
        req.noise = torch.from_numpy(g[f"{name}_z"])
        req.source = torch.from_numpy(g[f"{name}_source_raw"])
        res = dec.decode_batch([req])[0]
        np.testing.assert_allclose(res.flow_mel.numpy(), g[f"{name}_flow_mel"][0], rtol=0, atol=1e-4)
        np.testing.assert_allclose(res.mel.numpy(), g[f"{name}_mel_returned"][0], rtol=0, atol=1e-4)
        np.testing.assert_allclose(stream.commit(res), g[f"{name}_speech"][0], rtol=0, atol=1e-4)
    assert stream.finished
    assert stream.prepare(final=True) is None


def test_pr86_fix_vs_main_difference(g: dict) -> None:
    """What PR #86 changes, stated on the goldens we reproduce (pr86_*) and the ones we do not (main_*)."""
    # main returns the prepended HiFT cache frame with chunk 1's mel; PR #86 does not: one frame of drift.
    assert g["main_chunk1_mel_returned"].shape[-1] == g["pr86_chunk1_mel_returned"].shape[-1] + 1 == 139
    np.testing.assert_allclose(g["main_chunk1_mel_returned"][..., 1:], g["pr86_chunk1_mel_returned"], atol=1e-6)
    assert (int(g["main_chunk2_prompt_feat_len"]), int(g["pr86_chunk2_prompt_feat_len"])) == (173, 172)
    # So main streams 256 samples fewer than offline; PR #86 (and we) match the offline length.
    assert g["main_speech"].shape[0] == 100096
    assert _pr86_speech(g).shape[0] == g["offline_speech"].shape[-1] == 100352


def test_offline_matches_reference(dec: SpeechDecoder, g: dict) -> None:
    req = dec.offline_request(g["tokens57"])
    req.noise, req.source = torch.from_numpy(g["offline_z"]), torch.from_numpy(g["offline_source_raw"])
    res = dec.decode_batch([req])[0]
    np.testing.assert_allclose(res.mel.numpy(), g["offline_mel"][0], rtol=0, atol=1e-4)
    np.testing.assert_allclose(res.speech, g["offline_speech"][0], rtol=0, atol=1e-4)


def test_seeded_decode_follows_reference_rng_order(dec: SpeechDecoder, g: dict) -> None:
    """Flow then HiFT draw from one generator seeded 42, as the reference's global RNG after manual_seed(42).

    Not injected, so the HiFT phase cumsum makes this the README's 1e-3 'source from F0' tolerance.
    """
    before = torch.random.get_rng_state()
    wav = dec.decode(g["tokens57"])
    assert wav.dtype == np.float32
    np.testing.assert_allclose(wav, g["offline_speech"][0], rtol=0, atol=1e-3)
    assert torch.equal(before, torch.random.get_rng_state())


def test_feed_arbitrary_pieces_matches_pr86(dec: SpeechDecoder, g: dict) -> None:
    """feed() with ragged token counts decodes at the schedule steps (10, 20, then the final 27)."""
    before = torch.random.get_rng_state()
    tokens = g["tokens57"]
    pieces, out, pos = [3, 4, 5, 1, 16, 9, 19], [], 0
    with dec.open_stream(config=DecoderStreamConfig(schedule=(10, 20, 40))) as stream:
        for n in pieces:
            out.append(stream.feed(tokens[pos : pos + n]))
            pos += n
        assert pos == len(tokens)
        out.append(stream.feed([], final=True))
    sizes = [len(x) for x in out]
    assert sizes == [0, 0, 8448, 0, 0, 35328, 0, 56576]
    np.testing.assert_allclose(np.concatenate(out), _pr86_speech(g), rtol=0, atol=1e-3)
    assert torch.equal(before, torch.random.get_rng_state())


# -- streaming behaviour ------------------------------------------------------------------------------


def test_final_flush_without_new_tokens(dec: SpeechDecoder, g: dict) -> None:
    stream = dec.open_stream(config=DecoderStreamConfig(schedule=(10, 20)))
    audio = [stream.feed(g["tokens57"][:30])]  # exactly two chunks: the overlap tail is still held back
    audio.append(stream.feed(final=True))
    assert sum(map(len, audio)) == dec.mel_frames(30) * dec.hop_length
    assert len(audio[-1]) == (dec.consts.mel_overlap_len + 1) * dec.hop_length
    assert stream.finished
    empty = dec.open_stream()
    assert empty.feed(final=True).shape == (0,)


def test_close_frees_state_and_blocks_use(dec: SpeechDecoder, g: dict) -> None:
    stream = dec.open_stream()
    stream.feed(g["tokens57"][:25])
    assert stream.state_size() > 0
    stream.close()
    assert stream.closed
    assert stream.state_size() == 0
    with pytest.raises(StreamClosedError):
        stream.feed(g["tokens57"][25:30])
    with pytest.raises(StreamClosedError):
        stream.prepare(final=True)


def test_prepare_commit_protocol(dec: SpeechDecoder, g: dict) -> None:
    a, b = dec.open_stream(), dec.open_stream()
    req_a = a.prepare(g["tokens57"][:10])
    with pytest.raises(RuntimeError, match="in flight"):
        a.prepare()
    req_b = b.prepare(g["tokens57"][:10])
    res_a, res_b = dec.decode_batch([req_a, req_b])
    with pytest.raises(ValueError, match="does not belong"):
        a.commit(res_b)
    a.commit(res_a)
    with pytest.raises(ValueError, match="schedule"):
        DecoderStreamConfig(schedule=(5,))


def test_batched_streams_equal_separate_decodes(dec: SpeechDecoder, g: dict) -> None:
    """N streams with different lengths and histories in one decode_batch == N separate decodes.

    Mel and (source-injected) speech: atol 1e-4. With each row drawing its own source, F0 from a batched
    conv differs by float noise that the phase cumsum amplifies: the README's 1e-3 for sources from F0.
    """
    rng = np.random.default_rng(7)
    other = rng.integers(0, 16384, 40)
    cfgs = [DecoderStreamConfig(schedule=(10, 20)), DecoderStreamConfig(schedule=(13,)), DecoderStreamConfig()]
    seqs = [g["tokens57"], other, g["tokens57"][17:]]
    streams = [dec.open_stream(config=c) for c in cfgs]
    rounds = [[(0, 10, False), (0, 13, False), (0, 10, False)], [(10, 30, False), (13, 40, True), (10, 15, True)]]
    for spans in rounds:
        reqs = [s.prepare(seq[a:b], final=f) for s, seq, (a, b, f) in zip(streams, seqs, spans, strict=True)]
        separate = [dec.decode_batch([r])[0] for r in reqs]
        batched = dec.decode_batch(reqs)
        for one, many in zip(separate, batched, strict=True):
            assert one.speech.shape == many.speech.shape
            np.testing.assert_allclose(many.mel.numpy(), one.mel.numpy(), rtol=0, atol=1e-4)
            np.testing.assert_allclose(many.speech, one.speech, rtol=0, atol=1e-3)
        for req, one in zip(reqs, separate, strict=True):
            req.source = one.hift_source  # the source the separate decode used (already spliced: same result)
        injected = dec.decode_batch(reqs)
        for one, many in zip(separate, injected, strict=True):
            np.testing.assert_allclose(many.speech, one.speech, rtol=0, atol=1e-4)
        for s, res in zip(streams, batched, strict=True):
            s.commit(res)


def test_bounded_context(dec: SpeechDecoder, g: dict, capsys: pytest.CaptureFixture[str]) -> None:
    """max_prompt_tokens: same output length, identical until the limit bites; report the drift from full context."""
    tokens = g["tokens57"]

    def run(limit: int | None) -> tuple[list[np.ndarray], list[int]]:
        stream = dec.open_stream(config=DecoderStreamConfig(schedule=(10, 20, 40), max_prompt_tokens=limit))
        mels, prompts = [], []
        req = stream.prepare(tokens[:30])
        while req is not None:
            prompts.append(len(req.prompt_tokens))
            res = dec.decode_batch([req])[0]
            mels.append(res.mel.numpy())
            stream.commit(res)
            req = stream.prepare(tokens[30:], final=True) if stream.decoded_tokens == 30 else stream.prepare()
        return mels, prompts

    full, full_prompts = run(None)
    same, _ = run(57)
    bounded, bounded_prompts = run(20)
    assert full_prompts == [0, 10, 30]
    assert bounded_prompts == [0, 10, 20]  # the 10 oldest tokens (one encoder block) are dropped
    for a, b in zip(full, same, strict=True):
        np.testing.assert_array_equal(a, b)
    for k in range(2):
        np.testing.assert_array_equal(full[k], bounded[k])
    assert [m.shape for m in full] == [m.shape for m in bounded]
    diff = np.abs(full[2] - bounded[2])
    # Baseline: how far a different noise draw moves the same (full-context) mel. Random weights make the
    # flow very non-local, so the bounded figure is only a regression guard, not a quality statement.
    z = torch.randn(80, 392, generator=torch.Generator().manual_seed(43))
    seed_diff = np.abs(dec.flow_mel(tokens, noise=z) - dec.flow_mel(tokens))
    with capsys.disabled():
        print(
            f"\n[bounded context 20 of 30 tokens, 57-token stream] last-chunk mel |diff| max {diff.max():.3f} "
            f"mean {diff.mean():.3f} (other-noise baseline: max {seed_diff.max():.3f} mean {seed_diff.mean():.3f})"
        )
    assert np.isfinite(diff).all()
    assert diff.mean() < seed_diff.mean()


# -- voices -------------------------------------------------------------------------------------------


def _fake_tokens(waveform: np.ndarray, sample_rate: int) -> list[int]:
    """Speech tokenizer stand-in: one token per 1280 samples at 16 kHz (12.5 Hz), as the real one."""
    n = math.ceil(len(waveform) * 16000 / sample_rate / 1280)
    return [int(x) for x in np.random.default_rng(len(waveform)).integers(0, 16384, n)]


def test_voice_prompt(dec: SpeechDecoder, g: dict) -> None:
    t = np.arange(int(1.3 * 24000)) / 24000
    wav = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    voice = dec.make_voice(wav, 24000, _fake_tokens(wav, 24000))
    assert isinstance(voice, Voice)
    assert len(voice.prompt_tokens) == 17
    assert voice.prompt_mel.shape == (80, dec.mel_frames(17))
    assert np.isfinite(voice.prompt_mel).all()

    tokens = g["tokens57"][:30]
    stream = dec.open_stream(voice, DecoderStreamConfig(schedule=(10, 20)))
    req = stream.prepare(tokens[:10])
    assert req.prompt_tokens == voice.prompt_tokens
    np.testing.assert_array_equal(req.prompt_mel.numpy(), voice.prompt_mel)
    first = stream.commit(dec.decode_batch([req])[0])
    total = len(first) + len(stream.feed(tokens[10:], final=True))
    # The prompt is excluded: the output covers only the new tokens' frames.
    assert total == (dec.mel_frames(17 + 30) - dec.mel_frames(17)) * dec.hop_length
    offline = dec.decode(tokens, voice)
    assert offline.shape[0] == total
    with pytest.raises(ValueError, match="frames"):
        dec.decode(tokens, Voice(voice.prompt_tokens, voice.prompt_mel[:, :-1]))


# -- checkpoint folders -------------------------------------------------------------------------------


def test_bad_folders(tmp_path: Path) -> None:
    folder = tmp_path / "dec"
    shutil.copytree(TINY / "speech_decoder", folder)
    text = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(text.replace("cosyvoice.flow.flow.MaskedDiffWithXvec", "evil.Flow"))
    with pytest.raises(CheckpointFormatError, match="evil.Flow"):
        load_speech_decoder(folder)
    (folder / "config.yaml").write_text(text + "boom: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(CheckpointFormatError, match="unsupported YAML tag"):
        load_speech_decoder(folder)
    (folder / "config.yaml").write_text(text)
    sd = torch.load(folder / "flow.pt", weights_only=True)
    sd["length_regulator.model.12.weight"] = torch.zeros(80, 80, 3)
    torch.save(sd, folder / "flow.pt")
    with pytest.raises(CheckpointFormatError, match=r"length_regulator\.model\.12\.weight"):
        load_speech_decoder(folder)
    (folder / "hift.pt").unlink()
    shutil.copy(TINY / "speech_decoder" / "flow.pt", folder / "flow.pt")
    with pytest.raises(CheckpointFormatError, match="hift.pt"):
        load_speech_decoder(folder)


def test_tiny_writer_round_trip(tmp_path: Path) -> None:
    folder = write_tiny_speech_decoder(tmp_path / "a", seed=3)
    again = write_tiny_speech_decoder(tmp_path / "b", seed=3)
    text = (folder / "config.yaml").read_text()
    assert "RANDOM WEIGHTS" in text
    assert "__set_seed3: !apply:torch.manual_seed [1986]" in text
    # Same data as the official-format tiny_a config (the released layout, llm section included).
    assert load_decoder_yaml(folder / "config.yaml") == load_decoder_yaml(TINY / "speech_decoder" / "config.yaml")
    for name in ("flow.pt", "hift.pt"):
        sa, sb = torch.load(folder / name, weights_only=True), torch.load(again / name, weights_only=True)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    dec = load_speech_decoder(folder)
    wav = dec.decode(np.random.default_rng(0).integers(0, 16384, 30))
    assert wav.shape == (dec.mel_frames(30) * 256,)
    rms = float(np.sqrt(np.mean(wav**2)))
    assert 1e-3 < rms
    assert np.mean(np.abs(wav) >= 0.99) < 0.01
