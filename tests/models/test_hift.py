"""HiFT vocoder + mel extractor: conformance/tiny_a hift.npz goldens, full-size key manifest, loader errors, RNG."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.models.speech_decoder.hift import HiFTConfig, HiFTGenerator, hift_checkpoint_shapes
from glm4voice_api.models.speech_decoder.loader import load_hift
from glm4voice_api.models.speech_decoder.mel import mel_filterbank, mel_spectrogram
from glm4voice_api.models.speech_decoder.yaml_config import load_decoder_yaml
from glm4voice_api.random_checkpoints.speech_decoder import init_random_hift_state_dict
from tests.conftest import CONFORMANCE

DECODER = CONFORMANCE / "tiny_a" / "speech_decoder"
GOLDEN = CONFORMANCE / "tiny_a" / "golden" / "hift.npz"
MANIFEST = CONFORMANCE / "manifests" / "hift.json"
WAV_ATOL = 5e-4  # conformance README: HiFT waveform with injected source
SOURCE_ATOL = 1e-3  # source recomputed from F0 (ill-conditioned phase cumsum)

needs_data = pytest.mark.usefixtures("conformance")  # fails, never skips, without the goldens


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    with np.load(GOLDEN) as z:
        return {k: torch.from_numpy(z[k]) for k in z.files}


@pytest.fixture(scope="module")
def cfg() -> HiFTConfig:
    return HiFTConfig.from_yaml(load_decoder_yaml(DECODER / "config.yaml")["hift"])


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    return torch.load(DECODER / "hift.pt", weights_only=True)


@pytest.fixture(scope="module")
def hift(state_dict: dict[str, torch.Tensor], cfg: HiFTConfig) -> HiFTGenerator:
    return load_hift(state_dict, cfg)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# -- conformance goldens --------------------------------------------------------------------------------------


@needs_data
def test_config_from_yaml(cfg: HiFTConfig, state_dict: dict[str, torch.Tensor]) -> None:
    assert cfg.upsample_factor == 256
    assert cfg.in_channels == 80
    assert list(hift_checkpoint_shapes(cfg)) == list(state_dict)  # same keys, same order as the file


@needs_data
def test_f0(hift: HiFTGenerator, golden: dict[str, torch.Tensor]) -> None:
    # float32 convolutions take other kernel paths on other CPUs (AVX2 vs AVX-512): 9.3e-5 relative was seen on an
    # Intel Xeon against goldens made elsewhere, 0 on the AMD EPYC of earlier runs.
    torch.testing.assert_close(hift.f0_predictor(golden["mel"]), golden["f0"], rtol=5e-4, atol=0)


@needs_data
def test_wav_given_source(hift: HiFTGenerator, golden: dict[str, torch.Tensor]) -> None:
    wav, source = hift.inference(golden["mel"], source=golden["source"])
    assert _max_diff(wav, golden["wav"]) < WAV_ATOL
    assert torch.equal(source, golden["source"])


@needs_data
def test_wav_given_source_with_cache(hift: HiFTGenerator, golden: dict[str, torch.Tensor]) -> None:
    cache = golden["cache_source"]
    wav, source = hift.inference(golden["mel"], cache_source=cache, source=golden["source"])
    assert _max_diff(wav, golden["wav_given_source_with_cache"]) < WAV_ATOL
    assert torch.equal(source[..., : cache.shape[-1]], cache)  # the returned source includes the splice
    assert torch.equal(source[..., cache.shape[-1] :], golden["source"][..., cache.shape[-1] :])


@needs_data
def test_source_noiseless(hift: HiFTGenerator, golden: dict[str, torch.Tensor]) -> None:
    source = hift.source_from_f0(golden["f0"], golden["phase_vec"], noise=False)
    assert _max_diff(source, golden["source_noiseless"]) < SOURCE_ATOL


@needs_data
def test_generator_reproduces_reference_draws(hift: HiFTGenerator, golden: dict[str, torch.Tensor]) -> None:
    # The reference seeded the global RNG with rng_seed; the same seed on our generator gives the same draws.
    gen = torch.Generator().manual_seed(int(golden["rng_seed"]))
    torch.testing.assert_close(hift.m_source.draw_phase(1, gen)[:, 1:], golden["phase_vec"][:, 1:], rtol=0, atol=1e-6)
    gen = torch.Generator().manual_seed(int(golden["rng_seed"]))
    _, source = hift.inference(golden["mel"], generator=gen)
    assert _max_diff(source, golden["source"]) < SOURCE_ATOL


# -- checkpoint format ----------------------------------------------------------------------------------------


@needs_data
def test_full_preset_matches_manifest() -> None:
    manifest = json.loads(MANIFEST.read_text())
    shapes = hift_checkpoint_shapes(HiFTConfig.full())
    assert list(shapes) == list(manifest["shapes"])
    assert {k: list(v) for k, v in shapes.items()} == manifest["shapes"]
    assert sum(math.prod(s) for s in shapes.values()) == manifest["num_elements"]


def test_full_preset_builds_on_meta() -> None:
    with torch.device("meta"):
        model = HiFTGenerator(HiFTConfig.full())
    wn_free = {k.replace(".weight_v", ".weight") for k in hift_checkpoint_shapes(HiFTConfig.full())}
    assert set(model.state_dict()) == {k for k in wn_free if not k.endswith(".weight_g")}


@needs_data
@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda sd: sd.pop("conv_post.weight_g"), "missing keys (1): conv_post.weight_g"),
        (lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), "unexpected keys (1): extra.weight"),
        (lambda sd: sd.__setitem__("ups.0.weight_g", torch.zeros(1, 1, 1)), "ups.0.weight_g: file [1, 1, 1]"),
        (lambda sd: sd.__setitem__("source_downs.0.weight_g", torch.zeros(1)), "source_downs.0.weight_g"),
    ],
)
def test_wrong_checkpoint_raises(state_dict: dict, cfg: HiFTConfig, mutate: object, needle: str) -> None:
    broken = dict(state_dict)
    mutate(broken)  # type: ignore[operator]
    with pytest.raises(CheckpointFormatError) as err:
        load_hift(broken, cfg)
    assert needle in str(err.value)


@needs_data
def test_plain_weight_instead_of_weight_norm_raises(state_dict: dict, cfg: HiFTConfig) -> None:
    broken = {k: v for k, v in state_dict.items() if not k.startswith("conv_pre.weight_")}
    broken["conv_pre.weight"] = torch.zeros(48, 80, 7)
    with pytest.raises(CheckpointFormatError, match=r"conv_pre\.weight_g.*conv_pre\.weight"):
        load_hift(broken, cfg)


def test_init_random_state_dict() -> None:
    cfg = HiFTConfig.tiny()
    sd = init_random_hift_state_dict(cfg, torch.Generator().manual_seed(7))
    assert {k: tuple(v.shape) for k, v in sd.items()} == hift_checkpoint_shapes(cfg)
    again = init_random_hift_state_dict(cfg, torch.Generator().manual_seed(7))
    assert all(torch.equal(sd[k], again[k]) for k in sd)
    mel = torch.randn(1, cfg.in_channels, 60, generator=torch.Generator().manual_seed(0)) * 2 - 6
    wav, _ = load_hift(sd, cfg).inference(mel)
    assert 0.01 < wav.pow(2).mean().sqrt().item() < 0.5  # audible
    assert (wav.abs() >= cfg.audio_limit).float().mean().item() < 0.05  # mostly below the clamp


# -- RNG, batching, dtype ---------------------------------------------------------------------------------------


def test_global_rng_untouched() -> None:
    cfg = HiFTConfig.tiny()
    before = torch.get_rng_state()
    model = load_hift(init_random_hift_state_dict(cfg, torch.Generator().manual_seed(1)), cfg)
    mel = torch.full((1, cfg.in_channels, 8), -5.0)
    wav_a, _ = model.inference(mel)
    model.inference(mel, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), before)
    wav_c, _ = model.inference(mel)
    assert torch.equal(wav_a, wav_c)  # no generator -> a fresh default-seeded one: deterministic


@needs_data
def test_batch_equals_separate_calls(hift: HiFTGenerator, golden: dict[str, torch.Tensor]) -> None:
    mels = [golden["mel"], torch.flip(golden["mel"], [-1]) * 0.9]
    sources = [golden["source"], golden["source"].flip(-1)]
    wav_b, _ = hift.inference(torch.cat(mels), source=torch.cat(sources))
    for i in range(2):
        wav_i, _ = hift.inference(mels[i], source=sources[i])
        assert _max_diff(wav_b[i : i + 1], wav_i) < WAV_ATOL

    # One generator per item: item i draws exactly what a separate call with that generator would.
    f0s = [hift.f0_predictor(m) for m in mels]
    src_b = hift.source_from_f0(torch.cat(f0s), generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    for i, seed in enumerate((1, 2)):
        src_i = hift.source_from_f0(f0s[i], generator=torch.Generator().manual_seed(seed))
        # Same draws; the sine phase (a cumsum over upsampled F0) may round differently batched on some CPUs.
        torch.testing.assert_close(src_b[i : i + 1], src_i, rtol=0, atol=1e-4)

    # Full path: F0 comes from a batched conv, so float noise (~1e-6 relative) enters through the phase cumsum.
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    wav_b, src_b = hift.inference(torch.cat(mels), generator=gens)
    for i, seed in enumerate((1, 2)):
        wav_i, src_i = hift.inference(mels[i], generator=torch.Generator().manual_seed(seed))
        assert _max_diff(src_b[i : i + 1], src_i) < SOURCE_ATOL
        assert _max_diff(wav_b[i : i + 1], wav_i) < 2e-3


@needs_data
def test_bad_source_shapes(hift: HiFTGenerator, golden: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="source must have shape"):
        hift.inference(golden["mel"], source=golden["source"][..., :-1])
    with pytest.raises(ValueError, match="cache_source"):
        hift.inference(golden["mel"], cache_source=torch.zeros(2, 1, 256), source=golden["source"])


@needs_data
def test_bf16_close_to_fp32(state_dict: dict, cfg: HiFTConfig, golden: dict[str, torch.Tensor]) -> None:
    wav32, _ = load_hift(state_dict, cfg).inference(golden["mel"], source=golden["source"])
    wav16, _ = load_hift(state_dict, cfg, dtype=torch.bfloat16).inference(golden["mel"], source=golden["source"])
    assert wav16.dtype == torch.float32
    # A smoke bound: random weights amplify bf16 rounding through the residual stacks (tiny_a: ~11 % RMS error,
    # random full preset: ~4 %), so this only shows bf16 runs, returns float32 and stays near the fp32 signal.
    rel = (wav16 - wav32).pow(2).mean().sqrt() / wav32.pow(2).mean().sqrt()
    assert rel.item() < 0.25


# -- mel extractor -------------------------------------------------------------------------------------------


def test_mel_filterbank_matches_librosa() -> None:
    # Values of librosa 0.11.0 filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000), computed once in a
    # throwaway venv (our implementation was bit-identical over the whole [80, 513] matrix).
    fb = mel_filterbank()
    assert fb.shape == (80, 513)
    assert fb.dtype == torch.float32
    expected = {
        (0, 1): 0.01552772056311369,
        (0, 2): 0.022651389241218567,
        (0, 3): 0.007123669609427452,
        (26, 46): 0.015522748231887817,
        (26, 47): 0.021799078211188316,
        (26, 48): 0.0075560021214187145,
        (40, 95): 0.0,
        (79, 358): 0.003265992971137166,
        (79, 371): 0.0001254465605597943,
    }
    for (row, col), value in expected.items():
        assert fb[row, col].item() == pytest.approx(value, rel=1e-6, abs=1e-12), (row, col)
    assert int((fb > 0).sum()) == 727
    assert fb.sum().item() == pytest.approx(3.713688373565674, rel=1e-6)
    # Each filter is one contiguous triangle; peaks move up monotonically.
    peaks = fb.argmax(dim=1)
    assert torch.all(peaks[1:] >= peaks[:-1])
    for row in fb:
        nz = torch.nonzero(row).flatten()
        assert nz.numel() > 0
        assert nz[-1] - nz[0] + 1 == nz.numel()


@pytest.mark.parametrize("n", [256 * 40, 256 * 40 + 100, 22050])
def test_mel_shape(n: int) -> None:
    wav = 0.1 * torch.randn(2, n, generator=torch.Generator().manual_seed(0))
    mel = mel_spectrogram(wav)
    assert mel.shape == (2, 80, n // 256)
    assert torch.isfinite(mel).all()
    assert mel.min().item() >= math.log(1e-5) - 1e-6


@pytest.mark.parametrize(("freq", "mel_bin"), [(1000.0, 26), (4000.0, 62)])
def test_mel_tone_peak(freq: float, mel_bin: int) -> None:
    # Slaney scale, 80 bins over 0-8 kHz: 1 kHz = 15 mel sits between filter peaks 25 (968 Hz) and 26 (1005 Hz);
    # 4 kHz lies closest to the peak of filter 62.
    t = torch.arange(22050, dtype=torch.float64) / 22050
    wav = (0.5 * torch.sin(2 * math.pi * freq * t)).float()[None]
    mel = mel_spectrogram(wav)
    assert mel.mean(dim=-1).argmax().item() == mel_bin
    silence = mel_spectrogram(torch.zeros(1, 22050))
    assert torch.allclose(silence, torch.full_like(silence, math.log(1e-5)))
