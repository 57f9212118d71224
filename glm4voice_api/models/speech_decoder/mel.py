"""Log-mel features of CosyVoice / Matcha-TTS (``matcha.utils.audio.mel_spectrogram``) for 22.05 kHz audio.

This is the flow model's mel space (HiFT's input). The filterbank is librosa's
``filters.mel(htk=False, norm="slaney")`` re-derived here in numpy, because librosa (and its scipy/numba
stack) is not a dependency; the float64 -> float32 steps follow librosa so the values agree bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["hz_to_mel_slaney", "mel_filterbank", "mel_spectrogram", "mel_to_hz_slaney"]

# Slaney's auditory scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above (27 mels per factor 6.4).
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def hz_to_mel_slaney(hz: np.ndarray | float) -> np.ndarray:
    """Hz -> Slaney mel (librosa ``hz_to_mel(htk=False)``), float64."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    return np.where(hz >= _MIN_LOG_HZ, _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-300) / _MIN_LOG_HZ) / _LOGSTEP, mel)


def mel_to_hz_slaney(mel: np.ndarray | float) -> np.ndarray:
    """Slaney mel -> Hz (librosa ``mel_to_hz(htk=False)``), float64."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOGSTEP * (mel - _MIN_LOG_MEL)), _F_SP * mel)


def mel_filterbank(
    sampling_rate: int = 22050,
    n_fft: int = 1024,
    num_mels: int = 80,
    fmin: float = 0.0,
    fmax: float | None = 8000.0,
) -> torch.Tensor:
    """Slaney-normalised triangular mel filterbank [num_mels, n_fft // 2 + 1], float32 (librosa defaults)."""
    fmax = sampling_rate / 2 if fmax is None else fmax
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sampling_rate)  # [F]
    # num_mels + 2 edges: filter i rises from edge i to its peak at edge i+1 and falls to edge i+2.
    edges = mel_to_hz_slaney(np.linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax), num_mels + 2))
    widths = np.diff(edges)  # [M+1]
    ramps = edges[:, None] - fft_freqs[None, :]  # [M+2, F]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)  # librosa stores float32 here
    # Slaney norm: each triangle gets unit area in Hz, so wide high-frequency filters are not louder.
    enorm = 2.0 / (edges[2:] - edges[:-2])
    weights = (weights * enorm[:, None]).astype(np.float32)
    return torch.from_numpy(weights)


def mel_spectrogram(
    wav: torch.Tensor,
    *,
    n_fft: int = 1024,
    num_mels: int = 80,
    sampling_rate: int = 22050,
    hop_size: int = 256,
    win_size: int = 1024,
    fmin: float = 0.0,
    fmax: float | None = 8000.0,
) -> torch.Tensor:
    """wav [B, N] (float, 22.05 kHz, nominally in [-1, 1]) -> log-mel [B, num_mels, N // hop_size].

    Matcha's recipe: reflect-pad (n_fft - hop) / 2 on both sides, STFT with ``center=False`` and a periodic
    Hann window, magnitude sqrt(re^2 + im^2 + 1e-9), mel projection, log(clamp(x, 1e-5)).
    Needs N >= (n_fft + hop) / 2 for the reflect padding; any N that is a multiple of the hop gives N / hop frames.
    """
    if wav.dim() != 2:  # [B, N]
        msg = f"wav must be [B, N], got {list(wav.shape)}"
        raise ValueError(msg)
    wav = wav.float()
    pad = (n_fft - hop_size) // 2
    padded = torch.nn.functional.pad(wav[:, None, :], (pad, pad), mode="reflect")[:, 0, :]  # [B, N + 2*pad]
    window = torch.hann_window(win_size, device=wav.device)
    spec = torch.stft(
        padded,
        n_fft,
        hop_length=hop_size,
        win_length=win_size,
        window=window,
        center=False,
        normalized=False,
        onesided=True,
        return_complex=True,
    )  # [B, F, T]
    magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)  # [B, F, T]
    basis = mel_filterbank(sampling_rate, n_fft, num_mels, fmin, fmax).to(wav.device)  # [M, F]
    return torch.log(torch.clamp(torch.matmul(basis, magnitude), min=1e-5))  # [B, M, T]
