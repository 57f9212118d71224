"""`Glm4VoiceForCausalLM`: vLLM's ChatGLM model with GLM-4-Voice's config fix-ups and padding masking.

The engine adapter runs the official config.json unchanged with
`hf_overrides={"architectures": ["Glm4VoiceForCausalLM"], "glm4voice_num_valid_tokens": N}`,
N = id of the last added token + 1 (168737 when `<|audio_0|>` is 152353).

- `original_rope`: vLLM's ChatGLM reads it without a default; GLM-4 checkpoints use the original
  (non-neox) rotary layout, so it defaults to True when absent.
- `tie_word_embeddings`: the checkpoint has its own `output_layer`; transformers defaults the flag to True
  when config.json lacks it, which would silently replace the output layer with the embeddings.
- Padding rows: the vocabulary is padded to 168960, and the lm_head scores the padding ids too (random and
  dummy weights do sample them). Their logits are set to -inf so no sampler, constraint or not, can pick them.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.config import VllmConfig
from vllm.model_executor.models.chatglm import ChatGLMForCausalLM

from glm4voice_vllm.interleave import num_valid_tokens


def apply_config_fixups(hf_config: Any) -> None:
    if getattr(hf_config, "original_rope", None) is None:
        hf_config.original_rope = True
    hf_config.tie_word_embeddings = False


class Glm4VoiceForCausalLM(ChatGLMForCausalLM):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        model_config = vllm_config.model_config
        apply_config_fixups(model_config.hf_config)  # before the parent reads them
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.num_valid_tokens = num_valid_tokens(model_config.hf_config, model_config.model)

    def compute_logits(self, *args: Any, **kwargs: Any) -> torch.Tensor | None:
        # Pass-through signature: (hidden_states) in vLLM 0.26 and 0.32, and whatever a later release adds.
        logits = super().compute_logits(*args, **kwargs)
        # None on pipeline/tensor-parallel ranks that do not hold the gathered logits.
        if logits is not None and self.num_valid_tokens is not None and self.num_valid_tokens < logits.shape[-1]:
            logits[..., self.num_valid_tokens :] = float("-inf")
        return logits
