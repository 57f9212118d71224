"""vLLM general plugin for GLM-4-Voice (entry point `vllm.general_plugins`: `glm4voice = glm4voice_vllm:register`).

vLLM calls `register()` in every process it starts (frontend, engine core, workers). It registers the
architecture `Glm4VoiceForCausalLM` lazily, so the model module (and torch) load only where the model is
built. The interleave constraint is not registered here: the engine adapter names it in
`logits_processors=[LOGITS_PROCESSOR]`, so it runs only in engines that ask for it.

Nothing heavy is imported at import time: vLLM imports this package in every process, and
`glm4voice_api` reads the constants below without vLLM installed.
"""

from __future__ import annotations

# The SamplingParams.extra_args key of the constraint, GLM-4-Voice's reply layout and its padded vocabulary size.
from glm4voice_vllm.interleave import AUDIO_SLOTS, EXTRA_ARGS_KEY, GLM4VOICE_VOCAB_SIZE, INTERLEAVE_PATTERN, TEXT_SLOTS

ARCHITECTURE = "Glm4VoiceForCausalLM"
MODEL_CLASS = "glm4voice_vllm.model:Glm4VoiceForCausalLM"
LOGITS_PROCESSOR = "glm4voice_vllm.logits:InterleaveLogitsProcessor"
NUM_VALID_TOKENS_KEY = "glm4voice_num_valid_tokens"  # hf_overrides key read by the model and the processor

__all__ = [
    "ARCHITECTURE",
    "AUDIO_SLOTS",
    "EXTRA_ARGS_KEY",
    "GLM4VOICE_VOCAB_SIZE",
    "INTERLEAVE_PATTERN",
    "LOGITS_PROCESSOR",
    "MODEL_CLASS",
    "NUM_VALID_TOKENS_KEY",
    "TEXT_SLOTS",
    "register",
]


def register() -> None:
    """Register the architecture with vLLM's ModelRegistry; safe to call any number of times."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
