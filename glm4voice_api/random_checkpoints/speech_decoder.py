"""Random-weight glm-4-voice-decoder folders in the exact official file format, for tests and benchmarks.

The folder holds what THUDM/glm-4-voice-decoder holds: ``config.yaml`` in the released HyperPyYAML layout
(including the unused ``llm:`` section and the ``__set_seed`` calls, which our loader never executes),
``flow.pt`` and ``hift.pt`` as plain state dicts with the real key names. The weights are noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from glm4voice_api.models.speech_decoder.flow import FlowConfig, FlowModel
from glm4voice_api.models.speech_decoder.hift import HiFTConfig, hift_checkpoint_shapes
from glm4voice_api.models.speech_decoder.loader import CONFIG_FILE, FLOW_FILE, HIFT_FILE

__all__ = [
    "init_random_flow_state_dict",
    "init_random_hift_state_dict",
    "render_decoder_yaml",
    "write_tiny_speech_decoder",
]

_OFFSET_STD = 0.1  # biases, norm offsets and gains spread (same recipe as conformance tiny_a)

# The released config.yaml with the flow/hift sizes as placeholders. The llm section is kept verbatim: it
# is part of the official format even though nothing uses it.
_TEMPLATE = """\
# RANDOM WEIGHTS: a tiny test decoder written by glm4voice_api.random_checkpoints.speech_decoder (seed {seed}).
# Same layout as the released GLM-4-Voice decoder config.yaml; only sizes differ. Not a usable vocoder.
# set random seed, so that you may reproduce your result.
__set_seed1: !apply:random.seed [1986]
__set_seed2: !apply:numpy.random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]
__set_seed4: !apply:torch.cuda.manual_seed_all [1986]

# fixed params
sample_rate: {sample_rate}
text_encoder_input_size: 512
llm_input_size: 1024
llm_output_size: 1024
spk_embed_dim: {spk_embed_dim}

# model params
# for all class/function included in this repo, we use !<name> or !<new> for intialization, so that user may find all corresponding class/function according to one single yaml.
# for system/third_party class/function, we do not require this.
llm: !new:cosyvoice.llm.llm.TransformerLM
    text_encoder_input_size: !ref <text_encoder_input_size>
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    text_token_size: 51866
    speech_token_size: 4096
    length_normalized_loss: True
    lsm_weight: 0
    spk_embed_dim: !ref <spk_embed_dim>
    text_encoder: !new:cosyvoice.transformer.encoder.ConformerEncoder
        input_size: !ref <text_encoder_input_size>
        output_size: 1024
        attention_heads: 8
        linear_units: 2048
        num_blocks: 3
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        use_cnn_module: False
        macaron_style: False
        use_dynamic_chunk: False
        use_dynamic_left_chunk: False
        static_chunk_size: 1
    llm: !new:cosyvoice.transformer.encoder.TransformerEncoder
        input_size: !ref <llm_input_size>
        output_size: !ref <llm_output_size>
        attention_heads: 8
        linear_units: 2048
        num_blocks: 7
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0
        input_layer: 'linear_legacy'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        static_chunk_size: 1

flow: !new:cosyvoice.flow.flow.MaskedDiffWithXvec
    input_size: {input_size}
    output_size: {output_size}
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: {vocab_size}
    input_frame_rate: {input_frame_rate}
    only_mask_loss: True
    encoder: !new:cosyvoice.transformer.encoder.BlockConformerEncoder
        output_size: {enc_output_size}
        attention_heads: {enc_heads}
        linear_units: {enc_units}
        num_blocks: {enc_blocks}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'block_rel_selfattn'
        block_size: {block_size}
        input_size: {input_size}
        use_cnn_module: False
        macaron_style: False
    length_regulator: !new:cosyvoice.flow.length_regulator.InterpolateRegulator
        channels: {output_size}
        sampling_ratios: {ratios}
    decoder: !new:cosyvoice.flow.flow_matching.ConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: {output_size}
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: '{t_scheduler}'
                training_cfg_rate: 0.2
                inference_cfg_rate: {cfg_rate}
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.ConditionalDecoder
            in_channels: {est_in}
            out_channels: {output_size}
            channels: {est_channels}
            dropout: 0
            attention_head_dim: {est_head_dim}
            n_blocks: {est_blocks}
            num_mid_blocks: {est_mid}
            num_heads: {est_heads}
            act_fn: 'gelu'

hift: !new:cosyvoice.hifigan.generator.HiFTGenerator
    in_channels: {output_size}
    base_channels: {hift_base}
    nb_harmonics: {nb_harmonics}
    sampling_rate: !ref <sample_rate>
    nsf_alpha: {nsf_alpha}
    nsf_sigma: {nsf_sigma}
    nsf_voiced_threshold: {nsf_threshold}
    upsample_rates: {up_rates}
    upsample_kernel_sizes: {up_kernels}
    istft_params:
        n_fft: {n_fft}
        hop_len: {hop_len}
    resblock_kernel_sizes: {rb_kernels}
    resblock_dilation_sizes: {rb_dilations}
    source_resblock_kernel_sizes: {src_kernels}
    source_resblock_dilation_sizes: {src_dilations}
    lrelu_slope: {lrelu_slope}
    audio_limit: {audio_limit}
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.ConvRNNF0Predictor
        num_class: 1
        in_channels: {output_size}
        cond_channels: {f0_cond}
"""


def _yaml_list(values: tuple) -> str:
    return "[" + ", ".join(_yaml_list(v) if isinstance(v, tuple) else str(v) for v in values) + "]"


def render_decoder_yaml(flow: FlowConfig, hift: HiFTConfig, *, seed: int = 0) -> str:
    """config.yaml text in the released HyperPyYAML layout for the given sizes."""
    enc, est = flow.encoder, flow.estimator
    return _TEMPLATE.format(
        seed=seed,
        sample_rate=hift.sampling_rate,
        spk_embed_dim=flow.spk_embed_dim,
        input_size=flow.input_size,
        output_size=flow.output_size,
        vocab_size=flow.vocab_size,
        input_frame_rate=flow.input_frame_rate,
        enc_output_size=enc.output_size,
        enc_heads=enc.attention_heads,
        enc_units=enc.linear_units,
        enc_blocks=enc.num_blocks,
        block_size=enc.block_size,
        ratios=_yaml_list(flow.regulator_ratios),
        t_scheduler=flow.t_scheduler,
        cfg_rate=flow.inference_cfg_rate,
        est_in=est.in_channels,
        est_channels=_yaml_list(est.channels),
        est_head_dim=est.attention_head_dim,
        est_blocks=est.n_blocks,
        est_mid=est.num_mid_blocks,
        est_heads=est.num_heads,
        hift_base=hift.base_channels,
        nb_harmonics=hift.nb_harmonics,
        nsf_alpha=hift.nsf_alpha,
        nsf_sigma=hift.nsf_sigma,
        nsf_threshold=int(hift.nsf_voiced_threshold)
        if float(hift.nsf_voiced_threshold).is_integer()
        else hift.nsf_voiced_threshold,
        up_rates=_yaml_list(hift.upsample_rates),
        up_kernels=_yaml_list(hift.upsample_kernel_sizes),
        n_fft=hift.istft_n_fft,
        hop_len=hift.istft_hop_len,
        rb_kernels=_yaml_list(hift.resblock_kernel_sizes),
        rb_dilations=_yaml_list(hift.resblock_dilation_sizes),
        src_kernels=_yaml_list(hift.source_resblock_kernel_sizes),
        src_dilations=_yaml_list(hift.source_resblock_dilation_sizes),
        lrelu_slope=hift.lrelu_slope,
        audio_limit=hift.audio_limit,
        f0_cond=hift.f0_cond_channels,
    )


def init_random_flow_state_dict(cfg: FlowConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Seeded random flow.pt tensors: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1), norm gains ~ 1 + N(0, 0.1)."""
    with torch.device("meta"):
        model = FlowModel(cfg)  # shapes only
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm | torch.nn.GroupNorm)}
    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        prefix, _, leaf = key.rpartition(".")
        noise = torch.randn(shape, generator=generator)
        if prefix in norms:
            out[key] = (1.0 if leaf == "weight" else 0.0) + _OFFSET_STD * noise
        elif leaf == "bias" or leaf.startswith("pos_bias"):
            out[key] = _OFFSET_STD * noise
        elif key == "input_embedding.weight":
            out[key] = noise
        else:
            out[key] = noise / math.sqrt(math.prod(shape[1:]))
    return out


def init_random_hift_state_dict(cfg: HiFTConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Seeded random weights in the hift.pt format (weight_g/weight_v), for tiny test checkpoints.

    Scaled so random mels give an audible waveform mostly below the +-audio_limit clamp, and an F0 mostly in
    the voiced range (threshold ``nsf_voiced_threshold``) so the sine source is exercised.
    """
    shapes = hift_checkpoint_shapes(cfg)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    out: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf == "alpha":
            out[key] = 0.5 + torch.rand(shape, generator=generator)
        elif leaf == "bias":
            out[key] = 0.1 * randn(*shape)
        elif leaf == "weight_g":
            continue  # drawn with its weight_v below
        else:
            fan_in = math.prod(shape[1:])
            if prefix.startswith("ups."):
                # ConvTranspose [in, out, k]: each output sample sees in * k / stride taps.
                fan_in = shape[0] * shape[2] // cfg.upsample_rates[int(prefix.split(".")[1])]
            w = randn(*shape) / math.sqrt(fan_in)
            if leaf == "weight_v":
                norm = w.flatten(1).norm(dim=1).reshape(-1, 1, 1)
                out[f"{prefix}.weight_g"] = norm * (1 + 0.1 * randn(shape[0], 1, 1))
            out[key] = w
    _scale_outputs(out, cfg, generator)
    return {k: out[k] for k in shapes}


def _scale_outputs(sd: dict[str, torch.Tensor], cfg: HiFTConfig, generator: torch.Generator) -> None:
    """Put F0 around 150 Hz and the log-magnitudes low enough that the iSTFT output stays mostly unclipped."""
    sd["f0_predictor.classifier.weight"] = sd["f0_predictor.classifier.weight"] * 40.0
    sd["f0_predictor.classifier.bias"] = 150.0 + 10.0 * torch.randn(1, generator=generator)
    n_bins = cfg.istft_n_fft // 2 + 1
    # Tuned on tiny and full: random mels then give an RMS of about 0.05-0.17 with under 1 % of samples clipped.
    sd["conv_post.weight_g"] = sd["conv_post.weight_g"] * 0.15
    bias = sd["conv_post.bias"].clone()
    bias[:n_bins] -= 3.0
    sd["conv_post.bias"] = bias


def write_tiny_speech_decoder(
    out_dir: str | Path,
    *,
    seed: int = 0,
    flow: FlowConfig | None = None,
    hift: HiFTConfig | None = None,
) -> Path:
    """Write config.yaml + flow.pt + hift.pt (random weights, tiny sizes by default) and return the folder."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    flow_cfg = flow or FlowConfig.tiny()
    hift_cfg = hift or HiFTConfig.tiny()
    generator = torch.Generator().manual_seed(seed)
    (folder / CONFIG_FILE).write_text(render_decoder_yaml(flow_cfg, hift_cfg, seed=seed), encoding="utf-8")
    torch.save(init_random_flow_state_dict(flow_cfg, generator), folder / FLOW_FILE)
    torch.save(init_random_hift_state_dict(hift_cfg, generator), folder / HIFT_FILE)
    return folder
