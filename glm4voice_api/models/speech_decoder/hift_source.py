"""HiFT's excitation path: the F0 predictor and the neural-source-filter sine source (CosyVoice ``SourceModuleHnNSF``).

Random draws follow the reference's order exactly, so a caller that seeds a ``torch.Generator`` the way the
reference seeded the global RNG gets the same phases and noise:
``rand([B, H, 1])`` (harmonic phases), ``randn([B, H, N])`` (sine noise), ``randn([B, N, 1])`` (drawn by the
reference's noise branch but unused). Every draw comes from an explicit generator; the global RNG is never touched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvRNNF0Predictor", "GeneratorArg", "SourceModuleHnNSF", "WNConv1d", "WNConvTranspose1d"]

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


class WNConv1d(nn.Conv1d):
    """Conv1d stored in hift.pt with legacy weight norm (``weight_g`` [out,1,1], ``weight_v``); folded at load."""


class WNConvTranspose1d(nn.ConvTranspose1d):
    """ConvTranspose1d stored with legacy weight norm; ``weight_g`` is [in,1,1] (dim 0 of the [in,out,k] weight)."""


class ConvRNNF0Predictor(nn.Module):
    """Mel -> F0 in Hz per frame: 5 x (weight-normed Conv1d k3, ELU), Linear to ``num_class``, abs."""

    # The reference hard-codes five conv layers; checkpoint keys are condnet.{0,2,4,6,8} (ELUs sit in between).
    num_layers = 5

    def __init__(self, num_class: int, in_channels: int, cond_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(self.num_layers):
            layers += [WNConv1d(in_channels if i == 0 else cond_channels, cond_channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(cond_channels, num_class)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # mel: [B, in_channels, T] -> f0: [B, T] (num_class == 1, as released)
        h = self.condnet(mel).transpose(1, 2)  # [B, T, C]
        return torch.abs(self.classifier(h).squeeze(-1))


def _generators(generator: GeneratorArg, batch: int) -> list[torch.Generator] | torch.Generator:
    """Normalise the generator argument: one shared generator, or exactly one per batch item."""
    if generator is None:
        # A fresh generator has torch's fixed default seed: calls without a generator are deterministic.
        return torch.Generator()
    if isinstance(generator, torch.Generator):
        return generator
    gens = list(generator)
    if len(gens) != batch:
        msg = f"got {len(gens)} generators for a batch of {batch}"
        raise ValueError(msg)
    return gens


def _draw(
    gens: list[torch.Generator] | torch.Generator,
    shape_of_item: tuple[int, ...],
    batch: int,
    kind: str,
    device: torch.device,
) -> torch.Tensor:
    """One reference draw (``rand`` or ``randn``) of shape [batch, *shape_of_item], float32, moved to ``device``.

    With one generator per item, item b's draw equals what a separate batch-1 call would draw, which is what
    makes a batched call equal to separate calls sample for sample.
    """
    fn = torch.rand if kind == "rand" else torch.randn
    if isinstance(gens, torch.Generator):
        out = fn((batch, *shape_of_item), generator=gens, device=gens.device)
    else:
        out = torch.cat([fn((1, *shape_of_item), generator=g, device=g.device) for g in gens])
    return out.to(device)


class SourceModuleHnNSF(nn.Module):
    """Harmonic-plus-noise source: SineGen (fundamental + ``harmonic_num`` overtones) -> ``l_linear`` -> tanh."""

    def __init__(
        self,
        sampling_rate: int,
        harmonic_num: int,
        sine_amp: float,
        noise_std: float,
        voiced_threshold: float,
    ) -> None:
        super().__init__()
        self.sampling_rate = sampling_rate
        self.harmonic_num = harmonic_num
        self.sine_amp = sine_amp
        self.noise_std = noise_std
        self.voiced_threshold = voiced_threshold
        self.l_linear = nn.Linear(harmonic_num + 1, 1)

    def draw_phase(self, batch: int, generator: GeneratorArg) -> torch.Tensor:
        """Reference draw 1: Uniform(-pi, pi) initial phases [B, H+1, 1] (element 0 is later ignored)."""
        gens = _generators(generator, batch)
        u = _draw(gens, (self.harmonic_num + 1, 1), batch, "rand", torch.device("cpu"))
        # torch.distributions.Uniform.sample: low + rand * (high - low), in float32.
        low, high = torch.tensor(-math.pi, dtype=torch.float32), torch.tensor(math.pi, dtype=torch.float32)
        return low + u * (high - low)

    def forward(
        self,
        f0_up: torch.Tensor,
        phase_vec: torch.Tensor | None = None,
        *,
        noise: bool = True,
        generator: GeneratorArg = None,
    ) -> torch.Tensor:
        """f0_up: [B, 1, N] Hz at the audio rate -> source [B, 1, N].

        ``phase_vec`` [B, H+1, 1] replaces the phase draw (its first element is forced to 0 as in the reference);
        ``noise=False`` replaces every noise draw by zeros (the deterministic ``source_noiseless`` path).
        Always computed in float32: the phase is a cumulative sum over all samples and is ill-conditioned.
        """
        f0_up = f0_up.float()
        batch, _, n = f0_up.shape
        gens = _generators(generator, batch)
        if phase_vec is None:
            phase_vec = self.draw_phase(batch, gens)
        phase_vec = phase_vec.to(device=f0_up.device, dtype=torch.float32).clone()
        phase_vec[:, 0, :] = 0  # the fundamental always starts at phase 0

        harmonics = torch.arange(1, self.harmonic_num + 2, device=f0_up.device, dtype=torch.float32)
        f_mat = f0_up * harmonics[None, :, None] / self.sampling_rate  # [B, H+1, N] cycles per sample
        theta = 2 * math.pi * (torch.cumsum(f_mat, dim=-1) % 1)
        sine = self.sine_amp * torch.sin(theta + phase_vec)  # [B, H+1, N]
        uv = (f0_up > self.voiced_threshold).to(torch.float32)  # [B, 1, N]
        if noise:
            # Voiced: small additive noise; unvoiced: noise with std sine_amp/3, so its peak is ~ the sine amplitude.
            noise_amp = uv * self.noise_std + (1 - uv) * self.sine_amp / 3
            sine = sine * uv + noise_amp * _draw(gens, (self.harmonic_num + 1, n), batch, "randn", f0_up.device)
            # Reference draw 3 (its unused noise branch): consumed only to keep the RNG stream in step.
            _draw(gens, (n, 1), batch, "randn", f0_up.device)
        else:
            sine = sine * uv
        merged = torch.tanh(F.linear(sine.transpose(1, 2), self.l_linear.weight.float(), self.l_linear.bias.float()))
        return merged.transpose(1, 2)  # [B, 1, N]
