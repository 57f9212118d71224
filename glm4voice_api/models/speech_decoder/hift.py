"""HiFT vocoder of GLM-4-Voice-Decoder (CosyVoice ``HiFTGenerator``): mel [B, 80, T] -> 22.05 kHz waveform [B, 256*T].

The module's parameter names are those of hift.pt with legacy weight norm folded: hift.pt stores
``weight_g``/``weight_v``; the module holds the plain ``weight`` = g * v / ||v|| (inference only, so folding
once at load is cheaper than recomputing the norm every call).

Batching: ``inference`` takes same-length batches [B, 80, T]. Callers with ragged lengths must group rows by
length (padding would leak into a row's last samples through the non-causal convolutions). Item b of a batch
matches a separate call on item b: with an injected source up to conv float noise (~1e-4); with one generator
per item the draws are identical, but F0 from a batched conv differs by ~1e-6 relative and the phase cumsum
amplifies that to ~1e-4 in the source and ~1e-3 in the waveform (measured on the conformance goldens).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.models.speech_decoder.hift_source import (
    ConvRNNF0Predictor,
    GeneratorArg,
    SourceModuleHnNSF,
    WNConv1d,
    WNConvTranspose1d,
)
from glm4voice_api.models.speech_decoder.yaml_config import YamlObject, expect_class

__all__ = ["HiFTConfig", "HiFTGenerator", "hift_checkpoint_shapes", "periodic_hann", "weight_normed_modules"]

HIFT_CLASS = "cosyvoice.hifigan.generator.HiFTGenerator"
F0_PREDICTOR_CLASS = "cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor"


@dataclass(frozen=True)
class HiFTConfig:
    """HiFTGenerator constructor arguments (defaults = the reference's defaults = the released config)."""

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 22050
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 8)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16)
    istft_n_fft: int = 16
    istft_hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    f0_num_class: int = 1
    f0_in_channels: int = 80
    f0_cond_channels: int = 512

    def __post_init__(self) -> None:
        n_up = len(self.upsample_rates)
        if len(self.upsample_kernel_sizes) != n_up or len(self.source_resblock_kernel_sizes) != n_up:
            msg = "hift: upsample_rates, upsample_kernel_sizes and source_resblock_kernel_sizes must have equal length"
            raise CheckpointFormatError(msg)
        if self.f0_num_class != 1 or self.f0_in_channels != self.in_channels:
            msg = "hift: f0_predictor must have num_class 1 and in_channels equal to the mel channels"
            raise CheckpointFormatError(msg)

    @property
    def upsample_factor(self) -> int:
        """Waveform samples per mel frame (256 as released): the upsampling stages times the iSTFT hop."""
        return math.prod(self.upsample_rates) * self.istft_hop_len

    @classmethod
    def tiny(cls) -> HiFTConfig:
        """The conformance tiny variant A: base and F0 channels 48, everything else as released."""
        return cls(base_channels=48, f0_cond_channels=48)

    @classmethod
    def full(cls) -> HiFTConfig:
        """The released GLM-4-Voice-Decoder HiFT (20.46 M parameters)."""
        return cls()

    @classmethod
    def from_yaml(cls, obj: YamlObject) -> HiFTConfig:
        """Build from the parsed ``hift:`` node of the decoder config.yaml (incl. its ``f0_predictor`` node)."""
        expect_class(obj, HIFT_CLASS, where="hift")
        f0 = expect_class(obj["f0_predictor"], F0_PREDICTOR_CLASS, where="hift.f0_predictor")
        plain = {f.name for f in fields(cls)} - {"istft_n_fft", "istft_hop_len"}
        plain = {n for n in plain if not n.startswith("f0_")}
        _reject_unknown(obj, plain | {"istft_params", "f0_predictor"}, "hift")
        _reject_unknown(f0, {"num_class", "in_channels", "cond_channels"}, "hift.f0_predictor")
        defaults = cls()
        kw = {name: _coerce(obj.get(name, getattr(defaults, name)), getattr(defaults, name)) for name in plain}
        istft = obj.get("istft_params", {"n_fft": defaults.istft_n_fft, "hop_len": defaults.istft_hop_len})
        return cls(
            **kw,
            istft_n_fft=int(istft["n_fft"]),
            istft_hop_len=int(istft["hop_len"]),
            f0_num_class=int(f0.get("num_class", 1)),
            f0_in_channels=int(f0.get("in_channels", 80)),
            f0_cond_channels=int(f0.get("cond_channels", 512)),
        )


def _reject_unknown(obj: YamlObject, allowed: set[str], where: str) -> None:
    # The reference constructor would raise TypeError on these; silently ignoring one could hide a new feature.
    unknown = sorted(set(obj.kwargs) - allowed)
    if unknown:
        msg = f"{where}: unknown constructor arguments {unknown}"
        raise CheckpointFormatError(msg)


def _coerce(value: object, like: object) -> object:
    """Give a YAML value the type of the dataclass default (lists -> tuples, ints -> floats where needed)."""
    if isinstance(like, tuple):
        return tuple(_coerce(v, like[0]) if like else v for v in value)  # type: ignore[union-attr]
    if isinstance(like, bool):
        return bool(value)
    if isinstance(like, float):
        return float(value)  # type: ignore[arg-type]
    if isinstance(like, int):
        return int(value)  # type: ignore[call-overload]
    return value


def snake(x: torch.Tensor, a: torch.Tensor, inv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Snake x + sin^2(a x) / a of ``x * mask`` (mask [B, 1, L] or None); ``a`` and ``inv`` are `Snake.terms()`."""
    if mask is not None:
        x = x * mask
    # One fused x + inv * s^2 instead of separate mul and add passes over the (memory-bound) activations.
    return torch.addcmul(x, inv, torch.sin(x * a).square())


def masked_residual(h: torch.Tensor, mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``h * mask + x``: a block's output re-zeroed past each row's end, added to its input."""
    return (h if mask is None else h * mask) + x


class Snake(nn.Module):
    """Snake activation x + sin^2(alpha x) / alpha with a per-channel, linear-scale alpha (BigVGAN)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))
        self._terms: tuple[object, tuple[torch.Tensor, torch.Tensor] | None] = (None, None)

    def terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha as [1, C, 1] and 1 / (alpha + 1e-9), computed once per weights, not per call.

        Why: they depend on the weights only, and computing them in every call was half of Snake's ops (five
        launches of ten; HiFT calls Snake 72 times a pass, each launched from Python). The same ops on the same
        values, so the same numbers. Recomputed when alpha changes (a load, a move to another dtype or device, an
        in-place update of the parameter; not a write through `alpha.data`, which bypasses its version). Built in
        inference mode when a served pass builds them: for inference only."""
        alpha = self.alpha
        key = (alpha.data_ptr(), alpha._version, alpha.dtype, alpha.device)
        if self._terms[0] != key or self._terms[1] is None:
            a = alpha.detach()[None, :, None].clone()  # a copy: both terms change together or not at all
            self._terms = (key, (a, 1.0 / (a + 1e-9)))
        return self._terms[1]  # type: ignore[return-value]

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._terms = (None, None)  # .to(), .half(), ...: computed again from the moved weights
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._terms = (None, None)
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return snake(x, *self.terms())


class ResBlock(nn.Module):
    """HiFi-GAN residual block: per dilation, Snake -> dilated conv -> Snake -> conv, added to the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2) for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)
        # The elementwise steps between the convolutions: these functions, or their compiled versions (compiled.py:
        # each becomes one fused pass over the activations instead of four to six).
        self.elementwise: tuple[Callable, Callable] = (snake, masked_residual)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: [B, C, L] -> [B, C, L]. mask [B, 1, L] (ragged batches, hift_ragged.py): x arrives zero past each row's
        # end, and every convolution's output is re-zeroed there, so each row sees the zeros its own call pads with.
        act, residual = self.elementwise
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.activations1, self.activations2, strict=True):
            h = c1(act(x, *a1.terms()))
            x = residual(c2(act(h, *a2.terms(), mask)), mask, x)
        return x


class HiFTGenerator(nn.Module):
    """HiFT: F0 predictor -> NSF sine source -> source STFT fused into a HiFi-GAN upsampler -> iSTFT.

    Submodules are registered in the reference's order so ``state_dict()`` order matches hift.pt.
    Build it through ``loader.load_hift`` (weights) or on the ``meta`` device (shapes only).
    """

    def __init__(self, cfg: HiFTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        base, n_fft = cfg.base_channels, cfg.istft_n_fft
        self.m_source = SourceModuleHnNSF(
            cfg.sampling_rate, cfg.nb_harmonics, cfg.nsf_alpha, cfg.nsf_sigma, cfg.nsf_voiced_threshold
        )
        self.conv_pre = WNConv1d(cfg.in_channels, base, 7, padding=3)
        self.ups = nn.ModuleList(
            WNConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True))
        )
        # The source STFT runs at the final frame rate; stage i sees it downsampled by the later stages' rates.
        down_rates = [1, *cfg.upsample_rates[::-1][:-1]]
        cum_rates = [math.prod(down_rates[: j + 1]) for j in range(len(down_rates))][::-1]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (u, k, d) in enumerate(
            zip(cum_rates, cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes, strict=True)
        ):
            ch = base // 2 ** (i + 1)
            if u == 1:
                self.source_downs.append(nn.Conv1d(n_fft + 2, ch, 1, 1))
            else:
                self.source_downs.append(nn.Conv1d(n_fft + 2, ch, u * 2, u, padding=u // 2))
            self.source_resblocks.append(ResBlock(ch, k, tuple(d)))
        self.resblocks = nn.ModuleList(
            ResBlock(base // 2 ** (i + 1), k, tuple(d))
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        )
        self.conv_post = WNConv1d(base // 2 ** len(self.ups), n_fft + 2, 7, padding=3)
        self.reflection_pad = nn.ReflectionPad1d((1, 0))
        self.register_buffer("stft_window", periodic_hann(n_fft), persistent=False)
        self.f0_predictor = ConvRNNF0Predictor(cfg.f0_num_class, cfg.f0_in_channels, cfg.f0_cond_channels)

    @property
    def upsample_factor(self) -> int:
        """Waveform samples per mel frame (256 as released)."""
        return self.cfg.upsample_factor

    def source_from_f0(
        self,
        f0: torch.Tensor,
        phase_vec: torch.Tensor | None = None,
        *,
        noise: bool = True,
        generator: GeneratorArg = None,
    ) -> torch.Tensor:
        """f0: [B, T] Hz per frame -> source [B, 1, T*upsample_factor] (nearest upsampling, then the NSF source)."""
        f0_up = f0[:, None, :].float().repeat_interleave(self.upsample_factor, dim=-1)  # [B, 1, N]
        return self.m_source(f0_up, phase_vec, noise=noise, generator=generator)

    def decode(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """mel [B, in_channels, T] + source [B, 1, N] -> waveform [B, N], clamped to +-audio_limit."""
        cfg = self.cfg
        dtype = self.conv_pre.weight.dtype
        window = self.stft_window.float()
        spec = torch.stft(
            source.squeeze(1).float(),
            cfg.istft_n_fft,
            cfg.istft_hop_len,
            cfg.istft_n_fft,
            window=window,
            return_complex=True,
        )  # [B, F, 64T+1]
        s_stft = torch.cat([spec.real, spec.imag], dim=1).to(dtype)  # [B, 2F, 64T+1]

        x = self.conv_pre(mel.to(dtype))  # [B, base, T]
        n_kernels = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))  # [B, base/2^(i+1), T * prod(rates[:i+1])]
            if i == len(self.ups) - 1:
                x = self.reflection_pad(x)  # +1 frame so the length matches the centred source STFT
            x = x + self.source_resblocks[i](self.source_downs[i](s_stft))
            xs = self.resblocks[i * n_kernels](x)
            for j in range(1, n_kernels):
                xs = xs + self.resblocks[i * n_kernels + j](x)
            x = xs / n_kernels

        x = self.conv_post(F.leaky_relu(x)).float()  # default slope 0.01 here, as in the reference
        n_bins = cfg.istft_n_fft // 2 + 1
        magnitude = torch.clip(torch.exp(x[:, :n_bins, :]), max=1e2)
        phase = torch.sin(x[:, n_bins:, :])  # squashes the phase to [-1, 1] rad: odd, but it is what was trained
        spec_out = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        wav = torch.istft(spec_out, cfg.istft_n_fft, cfg.istft_hop_len, cfg.istft_n_fft, window=window)
        return torch.clamp(wav, -cfg.audio_limit, cfg.audio_limit)  # [B, N]

    @torch.no_grad()
    def inference(
        self,
        mel: torch.Tensor,
        cache_source: torch.Tensor | None = None,
        source: torch.Tensor | None = None,
        generator: GeneratorArg = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mel [B, in_channels, T] -> (wav [B, N], source [B, 1, N]) with N = T * upsample_factor.

        - ``source`` [B, 1, N] replaces the whole source module output (no F0 prediction, no random draws).
        - ``cache_source`` [B, 1, S] overwrites the first S source samples before the source STFT (phase
          continuity across streaming chunks); the returned source includes the splice.
        - ``generator``: one ``torch.Generator`` (draws shaped for the whole batch, as the reference would) or one
          per item (item b then equals a separate call). None -> a fresh default-seeded CPU generator.
        """
        batch, _, frames = mel.shape
        n = frames * self.upsample_factor
        if source is None:
            f0 = self.f0_predictor(mel.to(self.f0_predictor.classifier.weight.dtype))  # [B, T]
            s = self.source_from_f0(f0, generator=generator)  # [B, 1, N]
        else:
            _expect_shape("source", source, (batch, 1, n))
            s = source.to(device=mel.device, dtype=torch.float32).clone()
        if cache_source is not None and cache_source.shape[-1] > 0:
            cached = cache_source.shape[-1]
            if cache_source.shape[:2] != (batch, 1) or cached > n:
                msg = f"cache_source must be [{batch}, 1, S<={n}], got {list(cache_source.shape)}"
                raise ValueError(msg)
            s[:, :, :cached] = cache_source.to(s)
        return self.decode(mel, s), s


def _expect_shape(name: str, t: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        msg = f"{name} must have shape {list(shape)}, got {list(t.shape)}"
        raise ValueError(msg)


def periodic_hann(n: int) -> torch.Tensor:
    # scipy's get_window("hann", n, fftbins=True) is computed in float64 and cast: do the same.
    return torch.hann_window(n, periodic=True, dtype=torch.float64).float()


def weight_normed_modules(model: nn.Module) -> set[str]:
    """Module names whose weights hift.pt stores as weight_g/weight_v."""
    return {name for name, m in model.named_modules() if isinstance(m, WNConv1d | WNConvTranspose1d)}


def hift_checkpoint_shapes(cfg: HiFTConfig) -> dict[str, tuple[int, ...]]:
    """hift.pt keys -> shapes in state-dict order (weight-normed modules: bias, weight_g, weight_v)."""
    with torch.device("meta"):
        model = HiFTGenerator(cfg)
    wn = weight_normed_modules(model)
    out: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        params = dict(module.named_parameters(recurse=False))
        if name in wn:
            # Legacy weight_norm deletes `weight` and appends g and v after the remaining `bias`.
            w = params.pop("weight")
            params |= {"weight_g": torch.empty(w.shape[0], 1, 1, device="meta"), "weight_v": w}
        out |= {prefix + k: tuple(p.shape) for k, p in params.items()}
    return out
