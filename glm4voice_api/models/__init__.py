"""Pure-PyTorch GLM-4-Voice models and loaders of the official checkpoint folders.

- ``speech_tokenizer/``: 16 kHz audio -> 12.5 Hz speech token ids (Whisper-VQ encoder, log-mel front end, loader).
- ``speech_decoder/``: speech token ids -> 22.05 kHz speech (flow encoder, estimator, ODE and its CUDA graphs,
  HiFT and its source, the YAML reader, streaming sessions, loader).
- ``errors.py`` and ``state_dict.py``: what both loaders share.

Nothing here imports FastAPI or the serving layers; loaders read the official files unchanged. The loaders are
imported lazily so that `import glm4voice_api.models.errors` stays cheap (no torch).
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_speech_decoder", "load_speech_tokenizer"]


def __getattr__(name: str) -> Any:
    if name == "load_speech_tokenizer":
        from glm4voice_api.models.speech_tokenizer.loader import load_speech_tokenizer

        return load_speech_tokenizer
    if name == "load_speech_decoder":
        from glm4voice_api.models.speech_decoder.loader import load_speech_decoder

        return load_speech_decoder
    raise AttributeError(name)
