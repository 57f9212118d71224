"""`torch.compile` for what runs outside the flow's CUDA graphs: HiFT's elementwise steps and the flow encoder's
layers.

Why: the flow's ODE is replayed from CUDA graphs, but the encoder before it and HiFT after it are launched op by op
from Python: on the full-size model the encoder 315 ops per pass and HiFT 658 (`bench/decoder_ops.py`), two thirds
of those in HiFT's 12 residual blocks. Per dilation a block runs Snake, conv, mask, Snake, conv, mask, add; each
Snake is four passes over the activations (x * alpha, sin, square, addcmul) plus two small ones, memory-bound passes
over 22 kHz activations: HiFT took 86 ms of a 32-row pass on an H200 (bench/results/gpu_decoder_profile.json).
Every op is also a kernel launch and a GIL round trip on the decoder's thread (`bench/gil_probe.py`). Compiled, each
of HiFT's elementwise steps is one fused pass and one launch (per dilation 5 launches instead of ~15), and an
encoder layer's norms, attention arithmetic and feed-forward fuse around its matmuls.

What is compiled, and why not more: HiFT's elementwise functions, not its blocks, because a compiled convolution
takes guards on its sizes from the backend's algorithm choice (on the CPU `rows <= 15` and `24 * frames <= 20480`),
and a pass of a new size would compile again on a user's chunk. The encoder's layers compile whole (linear layers
and matmuls only): no size guards beyond 1 row vs several. With `dynamic=True` one graph serves every row count and
length; `warm_outside_graphs` runs the few variants (1 row, rows of one length, ragged rows; inference mode as
served) at load time, and `tests/models/test_compiled_parts.py` checks that new shapes compile nothing.
"""

from __future__ import annotations

import torch

from glm4voice_api.models.speech_decoder.decoder import HIFT_FRAME_BUCKET, SpeechDecoder
from glm4voice_api.models.speech_decoder.flow_encoder import ConformerEncoderLayer
from glm4voice_api.models.speech_decoder.hift import ResBlock, masked_residual, snake
from glm4voice_api.models.speech_decoder.hift_ragged import vocode_ragged

__all__ = ["compile_outside_graphs", "outside_graphs_compiled", "uncompile_outside_graphs", "warm_outside_graphs"]


def _blocks(decoder: SpeechDecoder) -> list[ResBlock]:
    return [m for m in decoder.hift.modules() if isinstance(m, ResBlock)]


def _layers(decoder: SpeechDecoder) -> list[ConformerEncoderLayer]:
    return [m for m in decoder.flow.encoder.modules() if isinstance(m, ConformerEncoderLayer)]


def compile_outside_graphs(decoder: SpeechDecoder) -> None:
    """Compile HiFT's elementwise steps and the encoder's layers (lazily: `warm_outside_graphs` runs the compiles)."""
    import torch._dynamo
    import torch.fx.experimental._config as fx_config

    # Separate symbols for rows, channels and frames even when equal (as the flow estimator's compile).
    fx_config.use_duck_shape = False
    # Graphs per code object: (1 row, several) x (masked or not) x the layers' few; over the default limit of 8,
    # past which a new variant would run eagerly.
    # past which a new variant would run eagerly. One set per device (guards include it): 8 GPUs x 4 variants.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    compiled = (torch.compile(snake, dynamic=True), torch.compile(masked_residual, dynamic=True))
    for block in _blocks(decoder):
        block.elementwise = compiled
    for layer in _layers(decoder):
        layer.compile(dynamic=True)


def uncompile_outside_graphs(decoder: SpeechDecoder) -> None:
    for block in _blocks(decoder):
        block.elementwise = (snake, masked_residual)
    for layer in _layers(decoder):
        layer._compiled_call_impl = None  # nn.Module.compile() keeps the compiled callable here


def outside_graphs_compiled(decoder: SpeechDecoder) -> bool:
    return any(block.elementwise[0] is not snake for block in _blocks(decoder))


@torch.inference_mode()
def warm_outside_graphs(decoder: SpeechDecoder, frames: int = 64) -> None:
    """One encoder pass and one ragged HiFT pass per variant a decoder pass can take (one row or several, masked or
    not: rows of different lengths are masked, and so is any pass padded to a shape bucket, even of one row), in
    inference mode as served, so that the compiles happen now."""
    device = decoder.device
    flow = decoder.flow
    bucket = HIFT_FRAME_BUCKET
    for lengths, pad in (
        ([frames], 0),
        ([frames, frames], 0),
        ([frames, frames - 7, frames - 3], 0),
        ([frames], bucket),
    ):
        if pad:
            lengths = [-(-frames // bucket) * bucket - 5]  # a row shorter than its bucket: masked
        tokens = torch.randint(0, flow.cfg.vocab_size, (len(lengths), max(lengths)), device=device)
        flow.encode(tokens, torch.tensor(lengths, device=device))
        mels = [torch.randn(flow.cfg.output_size, n, device=device) - 5 for n in lengths]
        gens = [torch.Generator(device=device).manual_seed(i) for i in range(len(lengths))]
        vocode_ragged(decoder.hift, mels, [None] * len(lengths), [None] * len(lengths), gens, frame_bucket=pad)
