"""`torch.compile` for HiFT's elementwise steps, which run outside the flow's CUDA graphs.

Why: the flow's ODE is replayed from CUDA graphs, but HiFT is launched op by op from Python: 658 ops per pass on the
full-size model (`bench/decoder_ops.py`), two thirds of them in its 12 residual blocks. Per dilation a block runs
Snake, conv, mask, Snake, conv, mask, add; each Snake is four passes over the activations (x * alpha, sin, square,
addcmul) plus two small ones, and these are memory-bound passes over 22 kHz activations: HiFT took 86 ms of a 32-row
pass on an H200 (bench/results/gpu_decoder_profile.json). Every op is also a kernel launch and a GIL round trip on
the decoder's thread (`bench/gil_probe.py`). Compiled, each elementwise step is one fused pass and one launch:
per dilation 5 launches instead of ~15.

Only the elementwise functions are compiled, not the blocks: a compiled convolution takes guards on its sizes from
the backend's algorithm choice (on the CPU `rows <= 15` and `24 * frames <= 20480`), and a pass of a new size would
compile again on a user's chunk. Elementwise code has no such guards: with `dynamic=True` one graph serves every
channel count, row count and length; only 1 row vs several and masked vs unmasked differ, and `warm_hift` runs those
few variants at load time (`tests/models/test_compiled_parts.py` checks that new shapes compile nothing).
"""

from __future__ import annotations

import torch

from glm4voice_api.models.speech_decoder.decoder import SpeechDecoder
from glm4voice_api.models.speech_decoder.hift import ResBlock, masked_residual, snake
from glm4voice_api.models.speech_decoder.hift_ragged import vocode_ragged

__all__ = ["compile_hift", "hift_compiled", "uncompile_hift", "warm_hift"]


def _blocks(decoder: SpeechDecoder) -> list[ResBlock]:
    return [m for m in decoder.hift.modules() if isinstance(m, ResBlock)]


def compile_hift(decoder: SpeechDecoder) -> None:
    """HiFT's residual blocks run compiled elementwise steps (compiled lazily: `warm_hift` runs the compiles)."""
    import torch.fx.experimental._config as fx_config

    # Separate symbols for rows, channels and frames even when equal (as the flow estimator's compile).
    fx_config.use_duck_shape = False
    compiled = (torch.compile(snake, dynamic=True), torch.compile(masked_residual, dynamic=True))
    for block in _blocks(decoder):
        block.elementwise = compiled


def uncompile_hift(decoder: SpeechDecoder) -> None:
    for block in _blocks(decoder):
        block.elementwise = (snake, masked_residual)


def hift_compiled(decoder: SpeechDecoder) -> bool:
    return any(block.elementwise[0] is not snake for block in _blocks(decoder))


@torch.inference_mode()
def warm_hift(decoder: SpeechDecoder, frames: int = 64) -> None:
    """One ragged HiFT pass per variant a pass can take (one row; rows of one length, unmasked; rows of different
    lengths, masked), in inference mode as served, so that the compiles happen now."""
    device = decoder.device
    n_mels = decoder.flow.cfg.output_size
    for lengths in ([frames], [frames, frames], [frames, frames - 7, frames - 3]):
        mels = [torch.randn(n_mels, n, device=device) - 5 for n in lengths]
        gens = [torch.Generator(device=device).manual_seed(i) for i in range(len(lengths))]
        vocode_ragged(decoder.hift, mels, [None] * len(lengths), [None] * len(lengths), gens)
