"""Speech tokens -> 80-bin mel: the GLM-4-Voice flow model (CosyVoice ``MaskedDiffWithXvec`` inference).

speaker affine -> token embedding -> block-causal Conformer -> ``encoder_proj`` -> nearest-interpolation
length regulator -> conditional flow matching (Euler, cosine schedule, classifier-free guidance).

Differences from the reference, all deliberate:
- always eval mode (the demo leaves dropout on, which makes its output depend on the RNG history);
- the noise comes from a caller's ``torch.Generator`` (default: a fresh CPU one seeded 42, which draws the
  same numbers as the reference's ``torch.manual_seed(42); randn_like(mu)``) and the global RNG is
  never touched;
- rows of different lengths can share one padded forward pass; each row equals its separate decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.models.speech_decoder.flow_encoder import BlockConformerEncoder, FlowEncoderConfig
from glm4voice_api.models.speech_decoder.flow_estimator import ConditionalDecoder, EstimatorConfig, masked_group_norm
from glm4voice_api.models.speech_decoder.flow_front_graphs import GraphedFlowFront
from glm4voice_api.models.speech_decoder.flow_graphs import FlowGraphConfig, GraphedCFM, OdeRun
from glm4voice_api.models.speech_decoder.flow_lengths import mel_length, nearest_indices
from glm4voice_api.models.speech_decoder.transfer import lengths_tensor, to_device
from glm4voice_api.models.speech_decoder.yaml_config import YamlObject, expect_class

__all__ = ["FlowConfig", "FlowInput", "FlowModel", "FlowPass", "mel_length", "nearest_indices"]

FLOW_CLASS = "cosyvoice.flow.flow.MaskedDiffWithXvec"
REGULATOR_CLASS = "cosyvoice.flow.length_regulator.InterpolateRegulator"
CFM_CLASS = "cosyvoice.flow.flow_matching.ConditionalCFM"
NOISE_SEED = 42  # the reference reseeds with 42 before every flow call


@dataclass(frozen=True)
class FlowConfig:
    """Flow model sizes and inference constants (defaults = the released decoder config)."""

    encoder: FlowEncoderConfig = field(default_factory=FlowEncoderConfig)
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    input_size: int = 512  # token embedding width
    output_size: int = 80  # mel bins
    spk_embed_dim: int = 192
    vocab_size: int = 16384
    input_frame_rate: float = 12.5  # speech tokens per second
    regulator_channels: int = 80
    regulator_ratios: tuple[int, ...] = (1, 1, 1, 1)
    inference_cfg_rate: float = 0.7
    t_scheduler: str = "cosine"
    n_timesteps: int = 10  # hard-coded in the reference's flow.py, not in the YAML
    sample_rate: int = 22050  # mel frame rate = sample_rate / hop_length (also hard-coded in flow.py)
    hop_length: int = 256

    @classmethod
    def full(cls) -> FlowConfig:
        return cls()

    @classmethod
    def tiny(cls) -> FlowConfig:
        return cls(encoder=FlowEncoderConfig.tiny(), estimator=EstimatorConfig.tiny(), input_size=48)

    @classmethod
    def from_yaml(cls, obj: YamlObject, *, sample_rate: int = 22050, hop_length: int = 256) -> FlowConfig:
        """Build from the parsed ``flow:`` node; every size comes from the file."""
        expect_class(obj, FLOW_CLASS, where="flow")
        if obj.get("output_type", "mel") != "mel":
            msg = f"flow: unsupported output_type {obj['output_type']!r}"
            raise CheckpointFormatError(msg)
        reg = expect_class(obj["length_regulator"], REGULATOR_CLASS, where="flow.length_regulator")
        cfm = expect_class(obj["decoder"], CFM_CLASS, where="flow.decoder")
        params = cfm.get("cfm_params")
        if isinstance(params, YamlObject):  # !new:omegaconf.DictConfig {content: {...}}
            params = params.get("content", params.kwargs)
        params = params or {}
        if params.get("solver", "euler") != "euler":
            msg = f"flow.decoder: unsupported solver {params['solver']!r} (only 'euler')"
            raise CheckpointFormatError(msg)
        cfg = cls(
            encoder=FlowEncoderConfig.from_yaml(obj["encoder"]),
            estimator=EstimatorConfig.from_yaml(cfm["estimator"]),
            input_size=int(obj["input_size"]),
            output_size=int(obj["output_size"]),
            spk_embed_dim=int(obj["spk_embed_dim"]),
            vocab_size=int(obj["vocab_size"]),
            input_frame_rate=float(obj["input_frame_rate"]),
            regulator_channels=int(reg.get("channels", 80)),
            regulator_ratios=tuple(int(r) for r in reg.get("sampling_ratios", (1, 1, 1, 1))),
            inference_cfg_rate=float(params.get("inference_cfg_rate", 0.7)),
            t_scheduler=str(params.get("t_scheduler", "cosine")),
            sample_rate=int(sample_rate),
            hop_length=int(hop_length),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        problems = []
        if self.t_scheduler not in ("cosine", "linear"):
            problems.append(f"t_scheduler {self.t_scheduler!r}")
        if self.encoder.input_size != self.input_size:
            problems.append(f"encoder input_size {self.encoder.input_size} != embedding size {self.input_size}")
        if self.regulator_channels != self.output_size:
            problems.append(f"length_regulator channels {self.regulator_channels} != output_size {self.output_size}")
        if self.estimator.in_channels != 4 * self.output_size or self.estimator.out_channels != self.output_size:
            problems.append(
                f"estimator in/out {self.estimator.in_channels}/{self.estimator.out_channels} do not fit "
                f"[x, mu, spks, cond] of {self.output_size} channels"
            )
        if problems:
            msg = "flow config not supported: " + "; ".join(problems)
            raise CheckpointFormatError(msg)


@dataclass
class FlowInput:
    """One row of a flow batch: prompt+new tokens, the prompt's mel, optional injected noise."""

    tokens: torch.Tensor | np.ndarray  # [L] int, prompt tokens then new tokens (numpy: no torch op per row)
    prompt_mel: torch.Tensor  # [80, F_p]
    noise: torch.Tensor | None = None  # [80, T_total]; drawn from `generator` when None
    generator: torch.Generator | None = None  # default: fresh CPU generator seeded 42
    embedding: torch.Tensor | None = None  # [spk_embed_dim]; zeros (as GLM-4-Voice) when None


class InterpolateRegulator(nn.Module):
    """Nearest-neighbour upsampling of token features to mel frames, then a small conv stack."""

    def __init__(self, channels: int, ratios: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in ratios:
            layers += [nn.Conv1d(channels, channels, 3, 1, 1), nn.GroupNorm(1, channels), nn.Mish()]
        layers.append(nn.Conv1d(channels, channels, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(
        self, h: torch.Tensor, lengths: list[int], feat_lens: list[int], pad_to: int | None = None
    ) -> torch.Tensor:
        # h: [B, L, C] -> mu: [B, C, T], T = max(feat_lens) or pad_to if larger (the padding masked throughout)
        t_max = max(max(feat_lens), pad_to or 0)
        # Each row stretched over its own length (stretching a padded row would pull its padding into the valid
        # frames), all rows in one gather: the indices interpolate would pick, built on the host.
        index = np.zeros((h.size(0), t_max), dtype=np.int64)
        for i, (n, t) in enumerate(zip(lengths, feat_lens, strict=True)):
            index[i, :t] = nearest_indices(n, t)
        index_t = to_device(torch.from_numpy(index), h.device)
        padded = min(feat_lens) != t_max
        mask = torch.arange(t_max, device=h.device)[None, :] < lengths_tensor(feat_lens, h.device)[:, None]
        mask = mask.unsqueeze(1).to(h.dtype)  # [B, 1, T]
        x = torch.gather(h, 1, index_t[:, :, None].expand(-1, -1, h.size(2))).transpose(1, 2)  # [B, C, T]
        x = x * mask if padded else x
        for layer in self.model:
            if isinstance(layer, nn.GroupNorm):
                x = masked_group_norm(x, layer, mask if padded else None)
            elif isinstance(layer, nn.Conv1d) and padded:
                # Zero the padding so the conv sees what an unpadded row's zero padding would give.
                x = layer(x * mask)
            else:
                x = layer(x)
        return x * mask


class ConditionalCFM(nn.Module):
    """Euler ODE solver with classifier-free guidance; holds the estimator as ``decoder.estimator``."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.estimator = ConditionalDecoder(cfg.estimator)

    def time_span(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        t_span = torch.linspace(0, 1, self.cfg.n_timesteps + 1, device=device, dtype=dtype)
        if self.cfg.t_scheduler == "cosine":
            t_span = 1 - torch.cos(t_span * 0.5 * torch.pi)
        return t_span

    def forward(
        self,
        z: torch.Tensor,
        mask: torch.Tensor,
        mu: torch.Tensor,
        spks: torch.Tensor,
        cond: torch.Tensor,
        *,
        padded: bool | None = None,
    ) -> torch.Tensor:
        # z, mu, cond: [B, 80, T]; mask: [B, 1, T]; spks: [B, 80]
        if padded is None:  # a host sync; CUDA-graph capture passes it explicitly
            padded = bool((mask == 0).any())
        x, *doubled = self.prepare(z, mask, mu, spks, cond)
        for t, dt in self.steps(mu.device):
            self.step(x, *doubled, t, dt, padded=padded)
        return x

    def prepare(
        self, z: torch.Tensor, mask: torch.Tensor, mu: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The ODE state x (float32) and the doubled inputs (mask2, mu2, spks2, cond2) every step reads.

        The ODE state and time grid stay float32 even when the estimator runs in bf16/fp16: ten Euler updates
        accumulated in bf16 would cost more accuracy than the estimator's own rounding. The unconditional (CFG)
        branch zeroes mu, spks and cond; both branches share one batched pass.
        """
        x = z.float().clone()
        mu2 = torch.cat([mu, torch.zeros_like(mu)])
        spks2 = torch.cat([spks, torch.zeros_like(spks)])
        cond2 = torch.cat([cond, torch.zeros_like(cond)])
        return x, torch.cat([mask, mask]), mu2, spks2, cond2

    def steps(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(t, dt) of every Euler step, computed exactly as the reference's loop does (t accumulates dt); kept per
        device and schedule (read only: ~35 launches a pass otherwise, for the same numbers)."""
        key = (device, self.cfg.n_timesteps, self.cfg.t_scheduler)
        cache = self.__dict__.setdefault("_steps_cache", {})
        if key not in cache:
            cache[key] = self._compute_steps(device)
        return cache[key]

    def _compute_steps(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        t_span = self.time_span(device, torch.float32)
        t, dt = t_span[0], t_span[1] - t_span[0]
        out = []
        for step in range(1, len(t_span)):
            out.append((t, dt))
            t = t + dt
            if step < len(t_span) - 1:
                dt = t_span[step + 1] - t
        return out

    def step(
        self,
        x: torch.Tensor,
        mask2: torch.Tensor,
        mu2: torch.Tensor,
        spks2: torch.Tensor,
        cond2: torch.Tensor,
        t: torch.Tensor,
        dt: torch.Tensor,
        *,
        padded: bool,
    ) -> None:
        """One Euler step with classifier-free guidance, updating x in place (one CUDA graph captures this)."""
        rate = self.cfg.inference_cfg_rate
        x_in = x.to(mu2.dtype)
        v = self.estimator(torch.cat([x_in, x_in]), mask2, mu2, t, spks2, cond2, padded=padded).float()
        v_cond, v_uncond = v.chunk(2)
        v = (1.0 + rate) * v_cond - rate * v_uncond if rate > 0 else v_cond
        x.add_(dt * v)


class FlowModel(nn.Module):
    """``MaskedDiffWithXvec`` for inference. Submodule names match ``flow.pt``."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = BlockConformerEncoder(cfg.encoder)
        self.encoder_proj = nn.Linear(cfg.encoder.output_size, cfg.output_size)
        self.decoder = ConditionalCFM(cfg)
        self.length_regulator = InterpolateRegulator(cfg.regulator_channels, cfg.regulator_ratios)
        self.graphed: GraphedCFM | None = None
        """Bucketed/CUDA-graph runner of the ODE loop (`enable_graphs`); None = eager."""
        self.bucket_regulator = False
        """Pad the length regulator's frames to the graphs' bucket (the ODE pads to it anyway; see `regulate`)."""
        self.graphed_front: GraphedFlowFront | None = None
        """Set (`set_front_graphs`): while `graphed` is, `begin_batch`'s front runs through bucketed CUDA graphs."""
        self._front_kept: GraphedFlowFront | None = None  # kept while off: its graphs live on, never destroyed

    def enable_graphs(self, config: FlowGraphConfig | None = None, *, use_graphs: bool = True) -> None:
        """Run the ODE through `GraphedCFM` (CUDA graphs on a CUDA device; bucket padding only elsewhere)."""
        self.graphed = GraphedCFM(self.decoder, config, use_graphs=use_graphs)

    def set_front_graphs(self, on: bool, use_graphs: bool | None = None) -> GraphedFlowFront | None:
        """The front (encoder, regulator, speaker) through `GraphedFlowFront` (on) or eagerly (off); `use_graphs`
        (default: on CUDA) False runs its padded static-buffer path eagerly. Its `warmup` captures."""
        graphs = self.input_embedding.weight.is_cuda if use_graphs is None else use_graphs
        if on and (self._front_kept is None or self._front_kept.use_graphs != graphs):
            self._front_kept = GraphedFlowFront(self, use_graphs=graphs)
        self.graphed_front = self._front_kept if on else None
        return self.graphed_front

    # -- stages (exposed for the conformance tests) ------------------------------------------------------

    def speaker(self, embedding: torch.Tensor) -> torch.Tensor:
        # embedding: [B, spk_embed_dim] -> spks: [B, 80]; zeros give the layer's bias
        return self.spk_embed_affine_layer(F.normalize(embedding, dim=1))

    def encode(
        self, tokens: torch.Tensor, lengths: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens [B, L] (right-padded) -> (encoder output [B, L, D], projected h [B, L, 80]); `tables`: the
        encoder's position tables to slice (`BlockConformerEncoder.forward`)."""
        valid = (torch.arange(tokens.size(1), device=tokens.device)[None, :] < lengths[:, None]).unsqueeze(-1)
        # Negative ids (padding in the reference) are clamped to 0 and then zeroed by the mask.
        x = self.input_embedding(torch.clamp(tokens, min=0)) * valid.to(self.input_embedding.weight.dtype)
        enc = self.encoder(x, lengths, tables)
        return enc, self.encoder_proj(enc)

    def regulate(self, h: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, list[int]]:
        """h [B, L, 80] -> (mu [B, 80, T_max], per-row mel lengths)."""
        feat_lens = [mel_length(n, self.cfg) for n in lengths]
        # Padded (masked, so exact) to the frame count the ODE's graphs pad to anyway: its convolutions then see a
        # few shapes instead of a new one per pass, and a convolution backend builds a plan per new shape.
        pad_to = None
        if self.bucket_regulator and self.graphed is not None:
            bucket = self.graphed.bucket(1, max(feat_lens))[1]
            pad_to = bucket if bucket <= self.graphed.config.max_frames else None  # past it: no graph to match
        return self.length_regulator(h, lengths, feat_lens, pad_to), feat_lens

    def draw_noise(self, total_frames: int, generator: torch.Generator | None) -> torch.Tensor:
        """The reference's ``randn_like(mu)`` over the FULL prompt+new length, on CPU: [80, T]."""
        gen = generator if generator is not None else torch.Generator(device="cpu").manual_seed(NOISE_SEED)
        # Drawn as [80, T]: a draw fills its elements in order, so this is the reference's [1, 80, T] draw.
        return torch.randn((self.cfg.output_size, total_frames), generator=gen, device=gen.device)

    # -- inference ---------------------------------------------------------------------------------------

    def forward_batch(self, items: list[FlowInput]) -> list[torch.Tensor]:
        """Run several rows in one padded pass; returns each row's NEW frames [80, T_i - F_p_i]."""
        if not items:
            return []
        flow_pass = self.begin_batch(items)
        while flow_pass.step():
            pass
        return flow_pass.result()

    @torch.inference_mode()
    def begin_batch(self, items: list[FlowInput]) -> FlowPass:
        """Everything before the ODE (encoder, length regulator, noise) for one padded pass of several rows; the
        returned pass runs the ODE step by step (see `FlowPass`)."""
        lengths = [int(it.tokens.size if isinstance(it.tokens, np.ndarray) else it.tokens.numel()) for it in items]
        if min(lengths) == 0:
            msg = "flow input needs at least one token (prompt or new)"
            raise ValueError(msg)
        # Padded on the host (numpy: no op per row), then ONE copy that does not synchronise (see transfer.py).
        host_tokens = np.zeros((len(items), max(lengths)), dtype=np.int64)
        for i, it in enumerate(items):
            toks = it.tokens if isinstance(it.tokens, np.ndarray) else it.tokens.reshape(-1).cpu().numpy()
            host_tokens[i, : lengths[i]] = toks.reshape(-1)
        check_vocab(torch.from_numpy(host_tokens), self.cfg)  # once for the batch (the padding is 0)
        mu, mask, spks, feat_lens = self.front(host_tokens, lengths, [it.embedding for it in items])
        t_max = mu.size(2)

        prompt_lens = [int(it.prompt_mel.shape[-1]) for it in items]
        noises = []
        for i, it in enumerate(items):
            if prompt_lens[i] > feat_lens[i]:
                msg = f"prompt mel has {prompt_lens[i]} frames but the prompt+new tokens only give {feat_lens[i]}"
                raise ValueError(msg)
            noise = it.noise if it.noise is not None else self.draw_noise(feat_lens[i], it.generator)
            noise = noise[0] if noise.dim() == 3 and noise.shape[0] == 1 else noise
            if tuple(noise.shape) != (self.cfg.output_size, feat_lens[i]):
                msg = f"noise must be [{self.cfg.output_size}, {feat_lens[i]}], got {list(noise.shape)}"
                raise ValueError(msg)
            noises.append(noise)
        # Every row's prompt mel and noise into the padded batch with one scatter each (a copy per row is ~3 ops
        # launched from Python, per row and pass).
        cond = _scatter_frames([it.prompt_mel for it in items], prompt_lens, mu)
        z = _scatter_frames(noises, feat_lens, mu)
        if self.graphed is not None:
            run = self.graphed.start(z, mask, mu, spks, cond)
        else:
            x, *doubled = self.decoder.prepare(z, mask, mu, spks, cond)
            run = OdeRun(self.decoder, x, doubled, len(items), t_max, padded=min(feat_lens) != t_max)
        return FlowPass(run, [(prompt_lens[i], feat_lens[i]) for i in range(len(items))])

    def front(
        self, host_tokens: np.ndarray, lengths: list[int], embeddings: list[torch.Tensor | None]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """`begin_batch`'s pass before the ODE: tokens [B, L] int64 (right-padded with 0) -> (mu [B, 80, T], mask
        [B, 1, T], spks [B, 80], mel lengths); through `graphed_front` while it and the ODE's graphs are set (T: the
        ODE's frame bucket, as `regulate` pads to with `bucket_regulator`), else eagerly."""
        if self.graphed_front is not None and self.graphed is not None:
            feat_lens = [mel_length(n, self.cfg) for n in lengths]
            out = self.graphed_front(host_tokens, lengths, feat_lens, embeddings)
            if out is not None:  # None: past its buckets
                return *out, feat_lens
        w = self.input_embedding.weight
        device, dtype = w.device, w.dtype
        _, h = self.encode(to_device(torch.from_numpy(host_tokens), device), lengths_tensor(lengths, device))
        mu, feat_lens = self.regulate(h, lengths)  # [B, 80, T]
        mask = torch.arange(mu.size(2), device=device)[None, :] < lengths_tensor(feat_lens, device)[:, None]
        mask = mask.unsqueeze(1).to(dtype)  # [B, 1, T]
        emb = torch.zeros(len(lengths), self.cfg.spk_embed_dim, device=device, dtype=dtype)
        for i, e in enumerate(embeddings):
            if e is not None:
                emb[i] = to_device(e, device, dtype)
        return mu, mask, self.speaker(emb), feat_lens  # spks [B, 80]

    def inference(
        self,
        token: torch.Tensor,
        prompt_token: torch.Tensor | None = None,
        prompt_feat: torch.Tensor | None = None,
        *,
        embedding: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Reference-shaped single call: token [1, N], prompt_token [1, P], prompt_feat [1, F_p, 80].

        Returns the new mel [1, 80, T - F_p]; ``noise`` is [1, 80, T] like the goldens' ``z``.
        """
        prompt_token = prompt_token if prompt_token is not None else token.new_zeros(1, 0)
        prompt_mel = prompt_feat[0].transpose(0, 1) if prompt_feat is not None else torch.zeros(self.cfg.output_size, 0)
        item = FlowInput(
            tokens=torch.cat([prompt_token[0], token[0]]),
            prompt_mel=prompt_mel,
            noise=noise[0] if noise is not None else None,
            generator=generator,
            embedding=embedding[0] if embedding is not None else None,
        )
        return self.forward_batch([item])[0].unsqueeze(0)


class FlowPass:
    """One padded flow pass after its encoder: `step()` runs the next ODE step (True while more remain), `result()`
    gives each row's new frames [80, T_i - F_p_i]. Between two steps the caller may run other passes (see
    `DecoderScheduler`): each pass's ODE state lives in its own buffers."""

    def __init__(self, run: OdeRun, spans: list[tuple[int, int]]) -> None:
        self.run = run
        self._spans = spans

    def step(self) -> bool:
        return self.run.step()

    def result(self) -> list[torch.Tensor]:
        x, spans = self.padded_result()
        return [x[i, :, start:end] for i, (start, end) in enumerate(spans)]

    def padded_result(self) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """The padded solution [B, 80, T] and each row's new frames in it as (start, end)."""
        return self.run.result(), self._spans


def _scatter_frames(rows: list[torch.Tensor], widths: list[int], like: torch.Tensor) -> torch.Tensor:
    """A zero tensor like `like` [B, C, T] with rows[b] ([C, widths[b]]) in its first widths[b] frames: one
    concatenation and one indexed write for the batch (the index tables built on the host, copied once)."""
    out = torch.zeros_like(like)
    if not sum(widths):
        return out
    if len({r.device for r in rows}) > 1:  # e.g. injected noise on the host beside noise drawn on the GPU
        rows = [to_device(r, like.device) for r in rows]
    values = to_device(torch.cat(rows, dim=1), like.device, like.dtype)  # [C, sum(widths)]
    index = np.concatenate([np.repeat(np.arange(len(widths)), widths), np.concatenate([np.arange(w) for w in widths])])
    index_t = to_device(torch.from_numpy(index), like.device)
    n = values.shape[1]
    out[index_t[:n], :, index_t[n:]] = values.t()
    return out


def check_vocab(tokens: torch.Tensor, cfg: FlowConfig) -> None:
    """Token ids past the embedding table are a caller bug; fail with a message instead of an IndexError."""
    if tokens.numel() and (int(tokens.max()) >= cfg.vocab_size):
        msg = f"speech token id {int(tokens.max())} out of range (vocab_size {cfg.vocab_size})"
        raise ValueError(msg)
