"""vLLM worker extension (`--worker-extension-cls`): starts the speech decoder host inside vLLM's model process.

The API process calls `collective_rpc("glm4voice_start_decoder_host", args=(spec,))` once the engine is up;
vLLM runs the method in the process that runs the model (the engine core with one GPU, a worker process on CPU),
so the decoder shares the model's CUDA context (glm4voice_api/pipeline/decoder_host.py says why and how).
"""

from __future__ import annotations

DECODER_HOST_EXTENSION = "glm4voice_vllm.decoder_host.DecoderHostExtension"


class DecoderHostExtension:
    """Mixed into vLLM's worker class; only adds the one method."""

    def glm4voice_start_decoder_host(self, spec: dict) -> str:
        from glm4voice_api.pipeline.decoder_host import start_host
        from glm4voice_vllm.step_gate import StepGate

        gate = StepGate()
        gate.install(self.model_runner)  # type: ignore[attr-defined]  (the worker this class is mixed into)
        return start_host(spec, llm_gate=gate)
