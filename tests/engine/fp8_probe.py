"""Measure FP8's and bf16's distance from the unquantized LLM (`test_fp8_fidelity.py` runs this in a subprocess).

A subprocess because vLLM's in-process CPU engine leaves the process changed (its OpenMP threads bound to cores,
its environment): later tests in the same pytest worker computed other float results (HiFT's bit-exact checks).
Usage: python -m tests.engine.fp8_probe OUT_DIR (writes OUT_DIR/fp8_fidelity.json)
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import torch
from glm4voice_vllm import ARCHITECTURE, NUM_VALID_TOKENS_KEY

NUM_VALID = 168737
FP8_MAX = 448.0  # float8 e4m3's largest finite value
LINEAR_KEYS = ("query_key_value.weight", "dense.weight", "dense_h_to_4h.weight", "dense_4h_to_h.weight")


def fp8_round(x: torch.Tensor) -> torch.Tensor:
    """`x` through float8 e4m3 with one scale (its absolute max onto the format's largest value), back in its dtype."""
    scale = x.abs().max().float().clamp(min=1e-12) / FP8_MAX
    return ((x.float() / scale).to(torch.float8_e4m3fn).float() * scale).to(x.dtype)


def fp8_checkpoint(src: Path, dst: Path) -> Path:
    """A copy of the tiny checkpoint whose linear layers' weights went through FP8 (per layer, as vLLM quantizes)."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name != "model.safetensors":
            (dst / item.name).write_bytes(item.read_bytes())
    tensors = load_file(str(src / "model.safetensors"))
    rounded = 0
    for key, value in tensors.items():
        if key.startswith("transformer.encoder.layers.") and key.endswith(LINEAR_KEYS):
            tensors[key] = fp8_round(value.float())  # float32: e4m3 values times a scale need not be bf16-exact
            rounded += 1
    assert rounded == 8  # 2 layers x QKV, attention out, gate-up, down
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def _round_inputs(kind: str):
    def install(model: torch.nn.Module) -> int:
        from vllm.model_executor.layers.linear import LinearBase

        def hook(_module: torch.nn.Module, args: tuple) -> tuple:
            x = args[0]
            x = fp8_round(x) if kind == "fp8" else x.to(torch.bfloat16).to(x.dtype)
            return (x, *args[1:])

        layers = [m for m in model.modules() if isinstance(m, LinearBase) and m is not getattr(model, "lm_head", None)]
        for layer in layers:
            layer.register_forward_pre_hook(hook)
        return len(layers)

    return install


def _capture(model: torch.nn.Module) -> None:
    model._fidelity_logits = []  # type: ignore[attr-defined]
    inner = model.compute_logits

    def wrapped(*args, **kwargs):
        out = inner(*args, **kwargs)
        model._fidelity_logits.append(out.detach().float().clone())  # type: ignore[attr-defined]
        return out

    model.compute_logits = wrapped  # type: ignore[method-assign]


def _take(model: torch.nn.Module) -> torch.Tensor:
    out = torch.cat(model._fidelity_logits)[:, :NUM_VALID]  # type: ignore[attr-defined]
    model._fidelity_logits = []  # type: ignore[attr-defined]
    return out


def _logits(model_dir: Path, prompt: list[int], inputs: str | None) -> torch.Tensor:
    """Every prompt position's logits (teacher forced) from a float32 engine, its linear inputs rounded as `inputs`."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(
        model=str(model_dir),
        skip_tokenizer_init=True,
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        max_num_seqs=2,
        seed=0,
        hf_overrides={"architectures": [ARCHITECTURE], NUM_VALID_TOKENS_KEY: NUM_VALID},
    )
    try:
        llm.apply_model(_capture)
        if inputs:
            assert llm.apply_model(_round_inputs(inputs))[0] == 8
        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1, detokenize=False)
        llm.generate([TokensPrompt(prompt_token_ids=prompt)], params, use_tqdm=False)
        return llm.apply_model(_take)[0]
    finally:
        del llm
        gc.collect()


def _distance(ref: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    rel = ((other - ref).pow(2).mean() / ref.pow(2).mean()).sqrt()
    p, q = torch.log_softmax(ref, -1), torch.log_softmax(other, -1)
    kl = (p.exp() * (p - q)).sum(-1)
    top1 = (ref.argmax(-1) == other.argmax(-1)).float().mean()
    return {"rel_rms": rel.item(), "kl_mean": kl.mean().item(), "kl_max": kl.max().item(), "top1": top1.item()}


def measure(root: Path) -> dict[str, dict[str, float]]:
    from glm4voice_api.random_checkpoints.llm import write_tiny_llm

    ref_dir = write_tiny_llm(root / "ref", seed=0)
    fp8_dir = fp8_checkpoint(ref_dir, root / "fp8")
    g = torch.Generator().manual_seed(0)
    speech = torch.randint(152353, NUM_VALID, (60,), generator=g).tolist()
    text = torch.randint(0, 151329, (60,), generator=g).tolist()
    prompt = [151331, 151333, 151335, 198, *speech, 151336, 198, *text]
    ref = _logits(ref_dir, prompt, None)
    bf16 = _logits(ref_dir, prompt, "bf16")
    fp8 = _logits(fp8_dir, prompt, "fp8")
    assert ref.shape == (len(prompt), NUM_VALID)
    return {"bf16": _distance(ref, bf16), "fp8": _distance(ref, fp8), "positions": len(prompt)}


if __name__ == "__main__":
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # one process: apply_model reaches the model directly
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    out = Path(sys.argv[1])
    (out / "fp8_fidelity.json").write_text(json.dumps(measure(out)))
