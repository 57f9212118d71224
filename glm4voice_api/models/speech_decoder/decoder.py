"""GLM-4-Voice-Decoder: speech tokens -> 22.05 kHz waveform (flow + HiFT), offline, streaming and batched.

The streaming algorithm is ``AudioDecoder.token2wav`` with PR #86's fix (the returned mel excludes the
prepended HiFT cache frame, so the prompt features never drift): crossfade the first 34 new frames with
the previous chunk's held-back tail (hamming(68), float64), hold back the last 34 frames and the last
256 samples of every non-final chunk, carry 1 mel frame + 256 source samples into the next HiFT call.

Chunks of many streams can share one padded flow pass (``decode_batch``); every stream keeps its own
state in its ``DecoderStream`` (see ``stream.py``), nothing is kept here per session. ``loader.py`` reads the
official folder (config.yaml, flow.pt, hift.pt) unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from glm4voice_api.models.errors import CheckpointFormatError
from glm4voice_api.models.speech_decoder.chunks import ChunkRequest, ChunkResult, Voice
from glm4voice_api.models.speech_decoder.flow import (
    NOISE_SEED,
    FlowConfig,
    FlowInput,
    FlowModel,
    FlowPass,
    mel_length,
)
from glm4voice_api.models.speech_decoder.hift import HiFTGenerator
from glm4voice_api.models.speech_decoder.hift_graphs import GraphedHiFT, HiFTGraphConfig
from glm4voice_api.models.speech_decoder.hift_ragged import vocode_padded
from glm4voice_api.models.speech_decoder.pass_io import gather_rows, stage_pass
from glm4voice_api.models.speech_decoder.stream import DecoderStream, DecoderStreamConfig

__all__ = ["SpeechDecoder", "StreamingConstants"]

TOKEN_OVERLAP_LEN = 5  # flow_inference.py: tokens of mel regenerated and crossfaded at every chunk boundary
MEL_CACHE_LEN = 1  # mel frames carried into the next HiFT call


@dataclass(frozen=True)
class StreamingConstants:
    """token2wav constants, derived from the config like the reference derives them."""

    mel_overlap_len: int  # int(5 / 12.5 * 22050 / 256) = 34
    mel_cache_len: int  # 1
    source_cache_len: int  # mel_cache_len * hop = 256
    window: torch.Tensor  # numpy.hamming(2 * mel_overlap_len), float64

    @classmethod
    def from_config(cls, flow: FlowConfig) -> StreamingConstants:
        overlap = int(TOKEN_OVERLAP_LEN / flow.input_frame_rate * flow.sample_rate / flow.hop_length)
        window = torch.from_numpy(np.hamming(2 * overlap))
        return cls(overlap, MEL_CACHE_LEN, MEL_CACHE_LEN * flow.hop_length, window)


@dataclass
class _StagedChunk:
    """A chunk's mels between the flow and HiFT (token2wav steps 2-3)."""

    raw: torch.Tensor  # [80, M_raw] flow output as it came
    mel: torch.Tensor  # [80, M] crossfaded, overlap held back: what the chunk returns
    tail: torch.Tensor | None  # [80, 34] held-back overlap (non-final chunks)
    hift_mel: torch.Tensor  # [80, 1 + M] with the previous chunk's cache frame prepended: what HiFT vocodes


HIFT_FRAME_BUCKET = 16
"""HiFT frames per shape bucket with `set_shape_buckets`: at most 15 padding frames (0.17 s of audio) per pass."""


class SpeechDecoder:
    """Flow + HiFT with the token2wav chunking logic. Stateless between calls; streams hold the state."""

    def __init__(self, flow: FlowModel, hift: HiFTGenerator) -> None:
        if hift.cfg.in_channels != flow.cfg.output_size:
            msg = f"hift in_channels {hift.cfg.in_channels} != flow output_size {flow.cfg.output_size}"
            raise CheckpointFormatError(msg)
        if hift.upsample_factor != flow.cfg.hop_length:
            msg = f"hift upsampling {hift.upsample_factor} != flow hop {flow.cfg.hop_length}"
            raise CheckpointFormatError(msg)
        self.flow = flow.eval()
        self.hift = hift.eval()
        self.consts = StreamingConstants.from_config(flow.cfg)
        self._windows: dict[torch.device, torch.Tensor] = {}
        self.ragged_hift = True
        """False: HiFT once per group of rows of equal length (the previous path; kept for bench comparisons)."""
        self.hift_frame_bucket = 0
        """> 0: HiFT passes padded to a multiple of this many frames (`set_shape_buckets`)."""
        self.hift_graphs: GraphedHiFT | None = None
        """Set: HiFT's passes without injected sources run through bucketed CUDA graphs (`set_hift_graphs`)."""
        self._hift_graphs_kept: GraphedHiFT | None = None  # kept while off: its graphs live on, never destroyed

    @property
    def sample_rate(self) -> int:
        return self.flow.cfg.sample_rate

    @property
    def hop_length(self) -> int:
        return self.flow.cfg.hop_length

    @property
    def device(self) -> torch.device:
        return self.flow.input_embedding.weight.device

    @property
    def ode_steps(self) -> int:
        return self.flow.decoder.cfg.n_timesteps

    def set_ode_steps(self, steps: int) -> None:
        """Euler steps of the flow's ODE from the next pass on (the loader's `ode_steps`, on a loaded decoder).

        Why it can change after the CUDA graphs are captured: a graph is one Euler step with t and dt as inputs,
        replayed once per step (`flow_graphs.py`), so it serves any number of steps."""
        if steps < 1:
            msg = f"ode_steps must be >= 1, got {steps}"
            raise ValueError(msg)
        cfg = replace(self.flow.cfg, n_timesteps=steps)
        self.flow.cfg = self.flow.decoder.cfg = cfg

    def set_shape_buckets(self, on: bool, hift_frames: int = HIFT_FRAME_BUCKET) -> None:
        """Pad the convolutions that run outside the flow's graphs to a few frame counts: HiFT's to a multiple of
        `hift_frames`, the length regulator's to the graphs' bucket. The padding is masked (the same audio up to float
        rounding); costs up to `hift_frames` - 1 frames of HiFT work per pass. Why: cuDNN (and oneDNN on a CPU) build a plan per new input
        shape, and these lengths otherwise change from pass to pass (`profile_decoder --sections new_shapes`)."""
        self.hift_frame_bucket = hift_frames if on else 0
        self.flow.bucket_regulator = on

    def set_hift_graphs(self, on: bool, use_graphs: bool | None = None) -> GraphedHiFT | None:
        """HiFT through `GraphedHiFT` (on) or `vocode_padded` (off); `use_graphs` (default: on CUDA) False runs the
        graphs' padded static-buffer path eagerly. Rows padded to the flow graphs' batch buckets; `warmup` captures."""
        graphs = self.device.type == "cuda" if use_graphs is None else use_graphs
        kept = self._hift_graphs_kept
        if on and (kept is None or kept.use_graphs != graphs):
            sizes = self.batch_buckets or HiFTGraphConfig.batch_buckets
            kept = self._hift_graphs_kept = GraphedHiFT(
                self.hift, HiFTGraphConfig(batch_buckets=sizes), use_graphs=graphs
            )
        self.hift_graphs = kept if on else None
        return self.hift_graphs

    @property
    def batch_buckets(self) -> tuple[int, ...] | None:
        """The batch sizes a pass is padded to (its CUDA graphs'); None when the flow runs unbucketed."""
        graphed = self.flow.graphed
        return None if graphed is None else graphed.batch_buckets

    @property
    def context_block(self) -> int:
        """Tokens per flow-encoder attention block: a stream's bounded context starts on a multiple of it."""
        return self.flow.cfg.encoder.block_size

    def mel_frames(self, num_tokens: int) -> int:
        """Mel frames the flow produces for ``num_tokens`` tokens (the reference's float32 formula)."""
        return mel_length(num_tokens, self.flow.cfg)

    def draw_noise(self, total_frames: int, generator: torch.Generator | None) -> torch.Tensor:
        """The flow's noise over ``total_frames`` frames, drawn from ``generator`` (default: seeded 42): [80, T]."""
        return self.flow.draw_noise(total_frames, generator)

    # -- single-shot helpers -----------------------------------------------------------------------------

    def flow_mel(
        self,
        tokens: list[int] | np.ndarray | torch.Tensor,
        prompt_tokens: list[int] | np.ndarray | torch.Tensor | None = None,
        prompt_mel: np.ndarray | torch.Tensor | None = None,
        noise: np.ndarray | torch.Tensor | None = None,
    ) -> np.ndarray:
        """New-token mel [80, T_new]; ``noise`` [80, T_total] (or [1, 80, T_total]) replaces the seeded draw."""
        tokens_t = _as_tokens(tokens)
        prompt_t = _as_tokens(prompt_tokens if prompt_tokens is not None else [])
        mel = _as_mel(prompt_mel, self.flow.cfg.output_size)
        z = torch.as_tensor(noise).reshape(self.flow.cfg.output_size, -1) if noise is not None else None
        item = FlowInput(torch.cat([prompt_t, tokens_t]), mel, noise=z)
        return self.flow.forward_batch([item])[0].float().cpu().numpy()

    def vocode(
        self,
        mel: np.ndarray | torch.Tensor,
        source: np.ndarray | torch.Tensor | None = None,
        cache_source: np.ndarray | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """HiFT on one mel [80, T] -> waveform [256 * T]; optional injected source / cache_source ([.., N])."""
        mel_t = torch.as_tensor(mel).reshape(1, self.flow.cfg.output_size, -1).to(self.device)
        src = torch.as_tensor(source).reshape(1, 1, -1) if source is not None else None
        cache = torch.as_tensor(cache_source).reshape(1, 1, -1) if cache_source is not None else None
        wav, _ = self.hift.inference(mel_t, cache_source=cache, source=src, generator=generator)
        return wav[0].float().cpu().numpy()

    def decode(self, tokens: list[int] | np.ndarray | torch.Tensor, voice: Voice | None = None) -> np.ndarray:
        """Offline token2wav (one final call): float32 mono at ``sample_rate``. ``voice`` prompts the speaker."""
        request = self.offline_request(tokens, voice)
        return self.decode_batch([request])[0].speech

    def offline_request(
        self, tokens: list[int] | np.ndarray | torch.Tensor, voice: Voice | None = None
    ) -> ChunkRequest:
        prompt_tokens, prompt_mel = self.voice_prompt(voice)
        return ChunkRequest(_as_tokens(tokens).tolist(), prompt_tokens, prompt_mel, final=True)

    def voice_prompt(self, voice: Voice | None) -> tuple[list[int], torch.Tensor]:
        """The voice's tokens and mel, the mel on the decoder's device (a stream's history mels live there)."""
        if voice is None:
            return [], torch.zeros(self.flow.cfg.output_size, 0, device=self.device)
        mel = _as_mel(voice.prompt_mel, self.flow.cfg.output_size)
        want = self.mel_frames(len(voice.prompt_tokens))
        if mel.shape[1] != want:
            msg = f"voice prompt_mel has {mel.shape[1]} frames; {len(voice.prompt_tokens)} tokens need {want}"
            raise ValueError(msg)
        return list(voice.prompt_tokens), mel.to(self.device)

    # -- streaming ---------------------------------------------------------------------------------------

    def open_stream(self, voice: Voice | None = None, config: DecoderStreamConfig | None = None) -> DecoderStream:
        """A new streaming session; its output excludes the voice prompt. Close it to free its state."""
        return DecoderStream(self, voice, config or DecoderStreamConfig())

    # -- voices ------------------------------------------------------------------------------------------

    def make_voice(self, waveform: np.ndarray, sample_rate: int, tokens: list[int]) -> Voice:
        """Voice prompt from reference audio and its speech tokens: the tokens plus the audio's 22.05 kHz mel,
        cut or padded to the tokens' span."""
        import soxr

        from glm4voice_api.models.speech_decoder.mel import mel_spectrogram

        wav = np.asarray(waveform, dtype=np.float32).reshape(-1)
        tokens = [int(t) for t in tokens]
        if not tokens:
            msg = "voice audio produced no speech tokens"
            raise ValueError(msg)
        wav22 = wav if sample_rate == self.sample_rate else soxr.resample(wav, sample_rate, self.sample_rate)
        frames = self.mel_frames(len(tokens))
        # Zero-pad (or cut) to exactly the tokens' span, as the tokenizer pads its last 80 ms token with zeros.
        span = frames * self.hop_length
        wav22 = np.pad(wav22, (0, max(0, span - wav22.shape[0])))[:span].astype(np.float32)
        mel = mel_spectrogram(torch.from_numpy(wav22)[None])[0, :, :frames]  # [80, F]
        return Voice(prompt_tokens=tokens, prompt_mel=mel.numpy().astype(np.float32))

    # -- batched chunk decoding --------------------------------------------------------------------------

    def decode_batch(self, requests: list[ChunkRequest]) -> list[ChunkResult]:
        """Decode many streams' chunks: ONE padded flow pass, ONE ragged HiFT pass, ONE copy to the host.

        Each row equals its separate decode (padding is masked throughout, see ``hift_ragged.py``; every row
        draws from its own generator). Mels and carried state stay on the decoder's device: on a GPU the pass
        synchronises once, when the new audio of all rows comes back together.
        """
        decode_pass = self.begin_batch(requests)
        while decode_pass.step():
            pass
        return decode_pass.finish()

    @torch.inference_mode()
    def begin_batch(self, requests: list[ChunkRequest]) -> DecodePass:
        """`decode_batch` in three parts, for a scheduler that runs urgent passes between a long pass's ODE steps:
        this (the flow's encoder and noise), `DecodePass.step` (one ODE step each), `DecodePass.finish` (HiFT)."""
        gens = [
            r.generator if r.generator is not None else torch.Generator(device=r.rng_device).manual_seed(NOISE_SEED)
            for r in requests
        ]
        flow_rows = [i for i, r in enumerate(requests) if r.tokens]
        items = [
            FlowInput(
                tokens=np.asarray(requests[i].prompt_tokens + requests[i].tokens, dtype=np.int64),
                prompt_mel=requests[i].prompt_mel,
                noise=_as_tensor(requests[i].noise),
                generator=gens[i],
            )
            for i in flow_rows
        ]
        flow_pass = self.flow.begin_batch(items) if items else None
        return DecodePass(self, requests, gens, flow_rows, flow_pass)

    @torch.inference_mode()
    def _end_batch(
        self,
        requests: list[ChunkRequest],
        gens: list[torch.Generator],
        flow_x: torch.Tensor | None,
        spans: dict[int, tuple[int, int, int]],
    ) -> list[ChunkResult]:
        """token2wav steps 2-5 for every row: `flow_x` is the flow's padded output, `spans[i]` = (its row, start,
        end) of request i's new frames (requests without new tokens have none)."""
        if self.ragged_hift:
            results = self._end_batch_batched(requests, gens, flow_x, spans)
        else:
            flow_out = {i: flow_x[f, :, a:b] for i, (f, a, b) in spans.items()}
            staged = [self._crossfade_and_trim(r, flow_out.get(i)) for i, r in enumerate(requests)]
            speech = self._vocode(requests, staged, gens)
            results = [self._finish(r, s, w, src) for r, s, (w, src) in zip(requests, staged, speech, strict=True)]
        # One device-to-host copy for the whole pass (a copy per row would synchronise once per row).
        host = torch.cat([r.speech.reshape(-1) for r in results]).float().cpu().numpy() if results else None
        offset = 0
        for r in results:
            n = r.speech.numel()
            r.speech = np.ascontiguousarray(host[offset : offset + n], dtype=np.float32)
            offset += n
        return results

    def _end_batch_batched(
        self,
        requests: list[ChunkRequest],
        gens: list[torch.Generator],
        flow_x: torch.Tensor | None,
        spans: dict[int, tuple[int, int, int]],
    ) -> list[ChunkResult]:
        """The serving path: crossfades, HiFT's input, next tails and caches each as one gather over the batch
        (`pass_io.py`), HiFT as one ragged pass; the same values as `_crossfade_and_trim` + `_finish` row by row."""
        c = self.consts
        n_mels = self.flow.cfg.output_size
        st = stage_pass(
            requests, flow_x, spans, self._window(self.device), c.mel_overlap_len, c.mel_cache_len, n_mels,
            self.hift_frame_bucket,
        )  # fmt: skip
        empty_wav, empty_src = torch.zeros(0, device=self.device), torch.zeros(1, 0, device=self.device)
        wavs: list[torch.Tensor] = [empty_wav] * len(requests)
        srcs: list[torch.Tensor] = [empty_src] * len(requests)
        caches: list[torch.Tensor | None] = [None] * len(requests)
        rows = st.hift_rows
        if rows:
            cache_in, row_gens = [requests[i].cache_source for i in rows], [gens[i] for i in rows]
            injected = [_as_tensor(requests[i].source) for i in rows]
            if self.hift_graphs is not None and all(s is None for s in injected):
                wav, source = self.hift_graphs(st.hift_mel, st.hift_lengths, cache_in, row_gens)
            else:
                wav, source = vocode_padded(self.hift, st.hift_mel, st.hift_lengths, cache_in, injected, row_gens)
            samples = [t * self.hop_length for t in st.hift_lengths]
            keep = c.source_cache_len
            live = [j for j, i in enumerate(rows) if not requests[i].final]
            if live:
                tails = gather_rows(source, live, [samples[j] - keep for j in live], keep)  # [L, 1, keep]
                for j, t in zip(live, tails.unbind(0), strict=True):
                    caches[rows[j]] = t
            for j, (i, w, s) in enumerate(zip(rows, wav.unbind(0), source.unbind(0), strict=True)):
                n = samples[j]
                wavs[i] = w[: n - (0 if requests[i].final else keep)]
                srcs[i] = s[:, :n]
        return [
            ChunkResult(
                request=r,
                speech=wavs[i],
                mel=st.mel[i],
                flow_mel=st.raw[i],
                hift_source=srcs[i],
                overlap_tail=st.tail[i],
                cache_mel=st.cache_mel[i],
                cache_source=caches[i],
            )
            for i, r in enumerate(requests)
        ]

    def _window(self, device: torch.device) -> torch.Tensor:
        """The crossfade window on `device`, copied there once (a host copy per chunk would synchronise)."""
        cached = self._windows.get(device)
        if cached is None:
            cached = self._windows[device] = self.consts.window.to(device)
        return cached

    def _crossfade_and_trim(self, req: ChunkRequest, flow_mel: torch.Tensor | None) -> _StagedChunk:
        """token2wav steps 2-3 (PR #86 order): crossfade, hold back the overlap, prepend the cache frame."""
        c = self.consts
        n_mels = self.flow.cfg.output_size
        device = self.device
        if flow_mel is None:  # final flush without new tokens: vocode the held-back tail as it is
            raw = torch.zeros(n_mels, 0, device=device)
            mel = req.overlap_tail.float().to(device) if req.overlap_tail is not None else raw
        else:
            raw = flow_mel.float()
            mel = raw.clone()
            if req.overlap_tail is not None:
                k = c.mel_overlap_len
                if mel.shape[1] < k:
                    msg = f"chunk produced {mel.shape[1]} mel frames, fewer than the {k}-frame crossfade"
                    raise ValueError(msg)
                # numpy window: float64 arithmetic, cast back (the reference's tensor * ndarray promotion).
                window = self._window(mel.device)
                tail = req.overlap_tail.to(mel.device).double()[:, -k:]
                mel[:, :k] = (mel[:, :k].double() * window[:k] + tail * window[k:]).float()
        tail = None
        if not req.final:
            if mel.shape[1] <= c.mel_overlap_len:
                msg = f"non-final chunk has {mel.shape[1]} mel frames; more than {c.mel_overlap_len} are needed"
                raise ValueError(msg)
            tail = mel[:, -c.mel_overlap_len :].clone()
            mel = mel[:, : -c.mel_overlap_len]
        cache = req.cache_mel
        hift_mel = torch.cat([cache.float().to(mel.device), mel], dim=1) if cache is not None else mel
        return _StagedChunk(raw=raw, mel=mel, tail=tail, hift_mel=hift_mel)

    def _vocode(
        self, requests: list[ChunkRequest], staged: list[_StagedChunk], gens: list[torch.Generator]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """HiFT once per group of rows of equal length (`ragged_hift` False: the path before ragged passes, kept for
        bench comparisons; the serving path is `_end_batch_batched`)."""
        out: list[tuple[torch.Tensor, torch.Tensor]] = [
            (torch.zeros(1, 0, device=self.device), torch.zeros(1, 1, 0, device=self.device))
        ] * len(requests)
        rows = [i for i, st in enumerate(staged) if st.hift_mel.shape[1] > 0]
        if rows:
            groups: dict[tuple[int, bool, bool], list[int]] = {}
            for i in rows:
                key = (
                    staged[i].hift_mel.shape[1],
                    requests[i].cache_source is not None,
                    requests[i].source is not None,
                )
                groups.setdefault(key, []).append(i)
            for (_, cached, injected), group in groups.items():
                mel = torch.stack([staged[i].hift_mel for i in group])
                cache = torch.stack([requests[i].cache_source.reshape(1, -1) for i in group]) if cached else None
                src = torch.stack([_as_tensor(requests[i].source).reshape(1, -1) for i in group]) if injected else None
                wav, source = self.hift.inference(
                    mel, cache_source=cache, source=src, generator=[gens[i] for i in group]
                )
                for j, i in enumerate(group):
                    out[i] = (wav[j : j + 1], source[j : j + 1])
        return out

    def _finish(self, req: ChunkRequest, st: _StagedChunk, wav: torch.Tensor, source: torch.Tensor) -> ChunkResult:
        """token2wav step 4/5: keep the HiFT cache and hold back the last 256 samples of non-final chunks.

        ``speech`` is still a device tensor here; ``decode_batch`` copies every row's to the host at once.
        """
        c = self.consts
        result = ChunkResult(request=req, speech=wav[0], mel=st.mel, flow_mel=st.raw, hift_source=source[0])
        if not req.final:
            result.overlap_tail = st.tail
            result.cache_mel = st.mel[:, -c.mel_cache_len :].clone()
            result.cache_source = source[0, :, -c.source_cache_len :].clone()
            result.speech = wav[0, : -c.source_cache_len]
        return result


class DecodePass:
    """A `decode_batch` in progress: `step()` runs the flow's next ODE step (True while more remain), `wait()` keeps
    the caller at most one step ahead of the GPU, `finish()` vocodes and returns every row's result."""

    def __init__(
        self,
        decoder: SpeechDecoder,
        requests: list[ChunkRequest],
        gens: list[torch.Generator],
        flow_rows: list[int],
        flow_pass: FlowPass | None,
    ) -> None:
        self._decoder, self._requests, self._gens = decoder, requests, gens
        self._flow_rows, self._flow_pass = flow_rows, flow_pass

    @property
    def remaining_steps(self) -> int:
        return self._flow_pass.run.remaining if self._flow_pass is not None else 0

    def step(self) -> bool:
        return self._flow_pass is not None and self._flow_pass.step()

    def wait(self) -> None:
        if self._flow_pass is not None:
            self._flow_pass.run.wait()

    def finish(self) -> list[ChunkResult]:
        x, spans = self._flow_pass.padded_result() if self._flow_pass is not None else (None, [])
        by_request = {i: (f, a, b) for f, (i, (a, b)) in enumerate(zip(self._flow_rows, spans, strict=True))}
        return self._decoder._end_batch(self._requests, self._gens, x, by_request)

    def abort(self) -> None:
        """Give the pass's ODE buffers back without finishing (the pass failed)."""
        if self._flow_pass is not None:
            self._flow_pass.run.release()


def _as_tensor(x: np.ndarray | torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else torch.as_tensor(x).float()


def _as_tokens(tokens: list[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(tokens, dtype=np.int64) if not isinstance(tokens, torch.Tensor) else tokens)
    t = t.reshape(-1).long()
    if t.numel() and int(t.min()) < 0:
        msg = f"speech token ids must be >= 0, got {int(t.min())}"
        raise ValueError(msg)
    return t


def _as_mel(mel: np.ndarray | torch.Tensor | None, n_mels: int) -> torch.Tensor:
    if mel is None:
        return torch.zeros(n_mels, 0)
    t = torch.as_tensor(np.asarray(mel, dtype=np.float32) if not isinstance(mel, torch.Tensor) else mel).float()
    t = t.reshape(n_mels, -1) if t.dim() == 3 and t.shape[0] == 1 and t.shape[1] == n_mels else t
    if t.dim() != 2 or t.shape[0] != n_mels:
        msg = f"mel must be [{n_mels}, T], got {list(t.shape)}"
        raise ValueError(msg)
    return t
