"""Load the official GLM-4-Voice-Decoder folder (config.yaml, flow.pt, hift.pt) without executing the YAML.

Every state dict is checked key by key and shape by shape before it is loaded (``models.state_dict``); models are
built on the ``meta`` device, so no random initialisation runs and the global RNG is never touched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.models.speech_decoder.flow import FlowConfig, FlowModel
from glm4voice_api.models.speech_decoder.hift import (
    HiFTConfig,
    HiFTGenerator,
    hift_checkpoint_shapes,
    periodic_hann,
    weight_normed_modules,
)
from glm4voice_api.models.speech_decoder.yaml_config import load_decoder_yaml
from glm4voice_api.models.state_dict import check_state_dict, shapes_of

__all__ = ["CONFIG_FILE", "FLOW_FILE", "HIFT_FILE", "load_flow", "load_hift", "load_speech_decoder"]

CONFIG_FILE = "config.yaml"
FLOW_FILE = "flow.pt"
HIFT_FILE = "hift.pt"


def load_speech_decoder(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    ode_steps: int | None = None,
) -> SpeechDecoder:
    """Load an official GLM-4-Voice-Decoder folder (config.yaml + flow.pt + hift.pt) without executing the YAML.

    ``ode_steps``: Euler steps of the flow's ODE instead of the reference's 10 (fewer: proportionally less flow work,
    further from the reference; ``tests/models/test_flow.py`` bounds the difference)."""
    folder = Path(path)
    if not (folder / CONFIG_FILE).is_file():
        msg = f"{folder}: no {CONFIG_FILE}"
        raise CheckpointFormatError(msg)
    doc = load_decoder_yaml(folder / CONFIG_FILE)
    for key in ("flow", "hift"):
        if key not in doc:
            msg = f"{CONFIG_FILE}: no '{key}' section"
            raise CheckpointFormatError(msg)
    hift_cfg = HiFTConfig.from_yaml(doc["hift"])
    flow_cfg = FlowConfig.from_yaml(
        doc["flow"], sample_rate=hift_cfg.sampling_rate, hop_length=hift_cfg.upsample_factor
    )
    if ode_steps is not None:
        if ode_steps < 1:
            msg = f"ode_steps must be >= 1, got {ode_steps}"
            raise ValueError(msg)
        flow_cfg = replace(flow_cfg, n_timesteps=ode_steps)
    flow = load_flow(_load_state_dict(folder / FLOW_FILE), flow_cfg, device, dtype)
    hift = load_hift(_load_state_dict(folder / HIFT_FILE), hift_cfg, device, dtype)
    return SpeechDecoder(flow, hift)


def load_flow(
    state_dict: dict[str, torch.Tensor],
    cfg: FlowConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> FlowModel:
    """Build an eval-mode FlowModel from a flow.pt state dict."""
    with torch.device("meta"):
        model = FlowModel(cfg)  # no random init: every tensor comes from the checkpoint
    check_state_dict(
        shapes_of(state_dict), shapes_of(model.state_dict()), what=f"{FLOW_FILE} does not match config.yaml"
    )
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).requires_grad_(False).eval()


def load_hift(
    state_dict: Mapping[str, torch.Tensor],
    cfg: HiFTConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HiFTGenerator:
    """Build an eval-mode HiFTGenerator from a hift.pt state dict (weight norm folded into ``weight``).

    ``dtype`` applies to the generator convolutions only: the F0 predictor, source module, STFT and iSTFT stay
    float32 because the source phase is a cumulative sum over every sample and bf16 would wreck it.
    """
    what = f"{HIFT_FILE} does not match the HiFT config"
    check_state_dict(shapes_of(state_dict), hift_checkpoint_shapes(cfg), what=what)
    with torch.device("meta"):
        model = HiFTGenerator(cfg)  # no init, no global-RNG draws
    wn = weight_normed_modules(model)
    folded: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in wn and leaf == "weight_v":
            g = state_dict[f"{prefix}.weight_g"].float()
            # The reference's own weight-norm kernel (norm over every dim but 0), so the fold is bit-identical.
            folded[f"{prefix}.weight"] = torch._weight_norm(value.float(), g, 0)
        elif not (prefix in wn and leaf == "weight_g"):
            folded[key] = value.float()
    model.load_state_dict(folded, strict=True, assign=True)
    model.stft_window = periodic_hann(cfg.istft_n_fft)
    model.requires_grad_(False).eval().to(device)
    if dtype != torch.float32:
        generator_convs = (
            model.conv_pre,
            model.ups,
            model.source_downs,
            model.source_resblocks,
            model.resblocks,
            model.conv_post,
        )
        for part in generator_convs:
            part.to(dtype)
    return model


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        msg = f"missing decoder file {path}"
        raise CheckpointFormatError(msg)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code, or not a torch file
        msg = f"{path.name}: not a plain torch state dict ({exc})"
        raise CheckpointFormatError(msg) from exc
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        msg = f"{path.name}: expected a dict of tensors"
        raise CheckpointFormatError(msg)
    return sd
