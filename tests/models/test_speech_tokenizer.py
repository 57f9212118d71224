"""Speech tokenizer conformance: conformance/tiny_a goldens, full-size key manifest, loader errors, tiny writer."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.models.speech_tokenizer.encoder import WhisperVQConfig, WhisperVQEncoder
from glm4voice_api.models.speech_tokenizer.loader import load_speech_tokenizer
from glm4voice_api.models.speech_tokenizer.tokenizer import SpeechTokenizer
from glm4voice_api.pipeline.tokenizer_worker import SpeechTokenizerWorker
from glm4voice_api.random_checkpoints.speech_tokenizer import (
    NOTE_KEY,
    released_hf_config,
    write_tiny_speech_tokenizer,
)
from tests.conftest import CONFORMANCE

if TYPE_CHECKING:
    from collections.abc import Callable

TINY_A = CONFORMANCE / "tiny_a" / "speech_tokenizer"
GOLDEN = CONFORMANCE / "tiny_a" / "golden" / "tokenizer.npz"
MANIFEST = CONFORMANCE / "manifests" / "speech_tokenizer.json"
ATOL = 1e-4

pytestmark = pytest.mark.usefixtures("conformance")  # fails, never skips, without the goldens


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def waves(golden: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [golden[f"wav{i}_pcm16"].astype(np.float32) / 32768 for i in range(3)]


@pytest.fixture(scope="module")
def tokenizer() -> SpeechTokenizer:
    return load_speech_tokenizer(TINY_A)


def test_tokens_single_and_batched(tokenizer: SpeechTokenizer, waves: list[np.ndarray], golden: dict) -> None:
    assert tokenizer.tokens_per_second == 12.5
    for i, wav in enumerate(waves):
        assert tokenizer.tokenize(wav, 16000) == golden[f"tokens_single_{i}"].tolist(), f"input {i}"
    batched = tokenizer.tokenize_batch([(wav, 16000) for wav in waves])
    for i, tokens in enumerate(batched):
        assert tokens == golden[f"tokens_batched_{i}"].tolist(), f"input {i}"
    assert [len(t) for t in batched] == [17, 88, 438]


@pytest.mark.parametrize(("dtype", "most_flips"), [(torch.float16, 3), (torch.bfloat16, 16)])
def test_half_precision_tokens_stay_near_the_reference(
    dtype: torch.dtype, most_flips: int, waves: list[np.ndarray], golden: dict
) -> None:
    """The faster paths' fidelity bound (`speech_tokenizer.dtype` auto: float16 on CUDA), against the reference's
    float32 tokens: of 543, float16 changed 1 (single calls) and 2 (one batch), bfloat16 11; every change was a token
    whose two nearest codebook rows were nearly tied (margin below 0.15, where the median margin is 1.18)."""
    tokenizer = load_speech_tokenizer(TINY_A, dtype=dtype)
    assert tokenizer.dtype == dtype
    assert tokenizer.model.codebook.weight.dtype == torch.float32  # the VQ's distances need an unrounded codebook
    for calls in ("single", "batched"):
        got = [tokenizer.tokenize(w, 16000) for w in waves] if calls == "single" else None
        got = got or tokenizer.tokenize_batch([(w, 16000) for w in waves])
        flips = 0
        for i, tokens in enumerate(got):
            ref, margin = golden[f"tokens_{calls}_{i}"], golden[f"vq_margin_single_{i}"]
            changed = np.asarray(tokens) != ref
            assert changed.sum() == 0 or margin[changed].max() < 0.15, (calls, i)
            flips += int(changed.sum())
        assert flips <= most_flips, (calls, flips)


def test_own_stream_is_a_no_op_on_cpu(waves: list[np.ndarray], golden: dict) -> None:
    tokenizer = load_speech_tokenizer(TINY_A)
    tokenizer.use_own_stream()  # the decoder host's call; on a GPU the same calls run on a stream of their own
    assert tokenizer._stream is None
    assert tokenizer.tokenize(waves[0], 16000) == golden["tokens_single_0"].tolist()


def test_log_mel(tokenizer: SpeechTokenizer, waves: list[np.ndarray], golden: dict) -> None:
    features, mask = tokenizer.log_mel([waves[0]])
    np.testing.assert_allclose(features[0].cpu().numpy(), golden["logmel0"], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(mask[0].cpu().numpy(), golden["logmel0_attention_mask"])
    nopad, _ = tokenizer.log_mel([waves[0]], pad_to_token=False)
    np.testing.assert_allclose(nopad[0].cpu().numpy(), golden["logmel0_nopad"], rtol=0, atol=ATOL)


def test_hidden_states(tokenizer: SpeechTokenizer, waves: list[np.ndarray], golden: dict) -> None:
    features, mask = tokenizer.log_mel([waves[0]])
    with torch.inference_mode():
        out = tokenizer.model(features, mask, output_hidden_states=True)
    assert out.hidden_states is not None
    names = ["tok0_layer_in", "tok0_layer_out0", "tok0_layer_out1"]
    for name, hidden in zip(names, out.hidden_states, strict=True):
        np.testing.assert_allclose(hidden[0].numpy(), golden[name], rtol=0, atol=ATOL, err_msg=name)
    np.testing.assert_allclose(out.pre_vq[0].numpy(), golden["tok0_prevq_pooled"], rtol=0, atol=ATOL)
    assert out.token_ids[0][out.token_mask[0]].tolist() == golden["tokens_single_0"].tolist()


def test_resampling_path(tokenizer: SpeechTokenizer, waves: list[np.ndarray]) -> None:
    # 1.3 s at 8 kHz -> 16 kHz: same duration, so the same token count; rates are checked, not ids.
    tokens = tokenizer.tokenize(waves[0][::2].copy(), 8000)
    assert len(tokens) == 17
    assert all(0 <= t < 16384 for t in tokens)
    assert tokenizer.tokenize(np.zeros(0, np.float32), 16000) == []
    with pytest.raises(ValueError, match="mono"):
        tokenizer.tokenize(np.zeros((2, 100), np.float32), 16000)


def test_configs_match_files() -> None:
    assert WhisperVQConfig.from_hf_config(released_hf_config()) == WhisperVQConfig.full()
    tiny_a = json.loads((TINY_A / "config.json").read_text())
    assert WhisperVQConfig.from_hf_config(tiny_a) == WhisperVQConfig.tiny()


def test_full_size_keys_and_shapes_match_manifest() -> None:
    about = json.loads(MANIFEST.read_text())
    manifest = about["shapes"]
    with torch.device("meta"):
        model = WhisperVQEncoder(WhisperVQConfig.full())
    shapes = {k: list(t.shape) for k, t in model.state_dict().items()}
    # The module has no EMA buffers (training state); the loader tolerates exactly these two extra keys.
    ema = {"ema_count": [16384], "ema_weight": [16384, 1280]}
    assert {**ema, **shapes} == manifest
    assert list(shapes) == [k for k in manifest if k not in ema]
    ema_elements = 16384 + 16384 * 1280
    assert sum(t.numel() for t in model.state_dict().values()) + ema_elements == about["num_elements"]


def _copy_tiny_a(tmp_path: Path) -> Path:
    folder = tmp_path / "tok"
    shutil.copytree(TINY_A, folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


def _rewrite_weights(folder: Path, edit: Callable[[dict[str, torch.Tensor]], object]) -> None:
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "preprocessor_config.json"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    folder = _copy_tiny_a(tmp_path)
    (folder / name).unlink()
    with pytest.raises(CheckpointFormatError, match=name.replace(".", r"\.") + ": file not found"):
        load_speech_tokenizer(folder)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (
            lambda s: s.update({"layers.1.fc1.weight": torch.zeros(95, 48)}),
            r"wrong shapes \(1\): layers\.1\.fc1\.weight: file \[95, 48\] vs expected \[96, 48\]",
        ),
        (lambda s: s.update({"layers.2.fc1.weight": torch.zeros(96, 48)}), r"unexpected keys \(1\): layers\.2\.fc1"),
        (lambda s: s.pop("codebook.weight"), r"missing keys \(1\): codebook\.weight"),
        (lambda s: s.pop("embed_positions2.weight"), r"missing keys \(1\): embed_positions2\.weight"),
    ],
    ids=["wrong_shape", "extra_key", "missing_key", "missing_unused_key"],
)
def test_bad_weights(tmp_path: Path, edit: Callable[[dict[str, torch.Tensor]], object], pattern: str) -> None:
    folder = _copy_tiny_a(tmp_path)
    _rewrite_weights(folder, edit)
    with pytest.raises(CheckpointFormatError, match=pattern):
        load_speech_tokenizer(folder)


def test_ema_buffers_are_optional(tmp_path: Path, waves: list[np.ndarray], golden: dict) -> None:
    folder = _copy_tiny_a(tmp_path)
    _rewrite_weights(folder, lambda s: [s.pop("ema_count"), s.pop("ema_weight")])
    assert load_speech_tokenizer(folder).tokenize(waves[0], 16000) == golden["tokens_single_0"].tolist()


def test_bad_config(tmp_path: Path) -> None:
    folder = _copy_tiny_a(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["quantize_position"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointFormatError, match="missing key 'quantize_position'"):
        load_speech_tokenizer(folder)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    config["quantize_position"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointFormatError, match="not a readable safetensors file"):
        load_speech_tokenizer(folder)


def test_tiny_writer_round_trip(tmp_path: Path, waves: list[np.ndarray]) -> None:
    rng_before = torch.random.get_rng_state()
    folder = write_tiny_speech_tokenizer(tmp_path / "tiny", seed=3)
    assert torch.equal(rng_before, torch.random.get_rng_state())

    assert (folder / "preprocessor_config.json").read_bytes() == (TINY_A / "preprocessor_config.json").read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config.pop(NOTE_KEY)
    assert set(config) == set(json.loads((TINY_A / "config.json").read_text()))
    written = {k: list(v.shape) for k, v in load_file(folder / "model.safetensors").items()}
    reference = {k: list(v.shape) for k, v in load_file(TINY_A / "model.safetensors").items()}
    assert written == reference

    tokens = load_speech_tokenizer(folder).tokenize_batch([(w, 16000) for w in waves])
    assert [len(t) for t in tokens] == [17, 88, 438]
    assert len(set(tokens[2])) > 100
    assert tokens[0] != tokens[1][:17]


@pytest.mark.asyncio
async def test_worker_with_real_tokenizer(tokenizer: SpeechTokenizer, waves: list[np.ndarray], golden: dict) -> None:
    worker = SpeechTokenizerWorker(tokenizer, max_batch=4, max_wait_ms=50)
    worker.start()
    try:
        results = await asyncio.gather(*(worker.tokenize(w) for w in waves[:2]))
    finally:
        await worker.close()
    assert results == [golden["tokens_batched_0"].tolist(), golden["tokens_batched_1"].tolist()]
