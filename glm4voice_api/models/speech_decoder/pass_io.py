"""A decoder pass's per-row bookkeeping (token2wav steps 2-5) done for the whole batch in a few ops.

Why: after the flow's ODE, every row of a pass is crossfaded with its stream's held-back tail, trimmed, given its
cache frame, copied into HiFT's padded input, and after HiFT its audio, next tail and caches are cut out. Done row
by row that was ~40 eager ops per row (66 in all per row with the draws and the copies before the ODE), each one
launched from Python on the decoder's thread: at 32 rows ~2000 launches and GIL round trips per pass, the part of
a pass that grows with its rows and runs while the GPU may idle. Here each of those steps is one gather over the
whole batch, driven by index tables built on the host (numpy) and copied to the device once, without a sync.

Exact: every step is a copy (gather, scatter) or the same float64 crossfade arithmetic as the row-by-row code
(`decoder._crossfade_and_trim`), so each row's values are bit for bit what that code makes
(`tests/models/test_pass_io.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from glm4voice_api.models.speech_decoder.chunks import ChunkRequest
from glm4voice_api.models.speech_decoder.transfer import to_device

__all__ = ["StagedPass", "gather_rows", "stage_pass"]


@dataclass
class StagedPass:
    """Every row's mels between the flow and HiFT, as padded batch tensors plus per-row views."""

    hift_mel: torch.Tensor  # [R, 80, W] HiFT's input, zero past each row's length (R = rows with frames)
    hift_rows: list[int]  # the request index of each of its rows
    hift_lengths: list[int]  # frames of each of its rows (cache frame included)
    raw: list[torch.Tensor]  # per request: [80, M_raw] the flow's output as it came ([80, 0] without one)
    mel: list[torch.Tensor]  # per request: [80, M] crossfaded, overlap held back (what the chunk returns)
    tail: list[torch.Tensor | None]  # per request: [80, 34] held-back overlap (non-final chunks)
    cache_mel: list[torch.Tensor | None]  # per request: its last `cache_len` frames of `mel` (non-final chunks)


def stage_pass(
    requests: list[ChunkRequest],
    flow_out: torch.Tensor | None,
    spans: dict[int, tuple[int, int, int]],
    window: torch.Tensor,
    overlap: int,
    cache_len: int,
    n_mels: int,
    frame_bucket: int = 0,
) -> StagedPass:
    """Crossfade, trim and prepend the cache frame for every row at once.

    `flow_out` is the flow's padded output [B_f, 80, T] and `spans[i] = (flow row, start, end)` where request i's
    new frames lie in it (requests without new tokens have no span: a final flush vocodes its held-back tail).
    `window` is the float64 crossfade window [2 * overlap] on `device`; HiFT's input is padded to a multiple of
    `frame_bucket` frames (0: to the longest row)."""
    k = overlap
    device = window.device
    # The pool: every frame any output row takes, stacked frames-major so ONE index_select builds each output.
    # Its parts: the flow's output, the crossfaded heads, the previous tails (a final flush vocodes its tail as
    # it is), the cache frames, and one zero frame for the padding.
    parts: list[torch.Tensor] = []
    base = 0
    head_base = tail_base = cache_base = 0
    t_flow = 0
    if flow_out is not None:
        x = flow_out.float()
        t_flow = x.shape[2]
        parts.append(x.transpose(1, 2).reshape(-1, n_mels))
        base = x.shape[0] * t_flow
    tailed = [i for i, r in enumerate(requests) if r.overlap_tail is not None]
    faded = [i for i in tailed if i in spans]
    for i in faded:
        _, start, end = spans[i]
        if end - start < k:
            msg = f"chunk produced {end - start} mel frames, fewer than the {k}-frame crossfade"
            raise ValueError(msg)
    head_base = base
    if faded:
        # The reference's crossfade in float64 (tensor * numpy-window promotion), cast back: same ops per element.
        heads_idx = np.concatenate([spans[i][0] * t_flow + spans[i][1] + np.arange(k) for i in faded])
        tails = to_device(torch.stack([requests[i].overlap_tail for i in faded]), device).double()[:, :, -k:]
        heads = parts[0].index_select(0, to_device(torch.from_numpy(heads_idx), device)).view(len(faded), k, n_mels)
        w = window[:, None]
        mixed = heads.double() * w[:k] + tails.transpose(1, 2) * w[k:]
        parts.append(mixed.float().reshape(-1, n_mels))
        base += len(faded) * k
    tail_base = base
    if tailed:
        parts.append(
            to_device(torch.stack([requests[i].overlap_tail for i in tailed]), device, torch.float32).transpose(1, 2)
        )
        parts[-1] = parts[-1].reshape(-1, n_mels)
        base += len(tailed) * requests[tailed[0]].overlap_tail.shape[1]
    cached = [i for i, r in enumerate(requests) if r.cache_mel is not None]
    cache_base = base
    if cached:
        parts.append(to_device(torch.cat([requests[i].cache_mel for i in cached], dim=1), device, torch.float32).t())
        base += parts[-1].shape[0]
    zero = base
    parts.append(torch.zeros(1, n_mels, device=device))
    pool = torch.cat(parts) if len(parts) > 1 else parts[0]

    # Each request's crossfaded (untrimmed) frames as pool positions, then what each output takes from them.
    fade_at = {i: j for j, i in enumerate(faded)}
    tail_at = {i: j for j, i in enumerate(tailed)}
    tail_width = requests[tailed[0]].overlap_tail.shape[1] if tailed else 0
    cache_off: dict[int, int] = {}
    off = cache_base
    for i in cached:
        cache_off[i] = off
        off += requests[i].cache_mel.shape[1]
    seqs: list[np.ndarray] = []
    trimmed: list[int] = []
    for i, r in enumerate(requests):
        if i in spans:
            f, start, end = spans[i]
            seq = f * t_flow + start + np.arange(end - start)
            if i in fade_at:
                seq[:k] = head_base + fade_at[i] * k + np.arange(k)
        elif r.overlap_tail is not None:  # a final flush: its held-back tail as it is
            seq = tail_base + tail_at[i] * tail_width + np.arange(r.overlap_tail.shape[1])
        else:
            seq = np.zeros(0, dtype=np.int64)
        if not r.final and seq.shape[0] <= k:
            msg = f"non-final chunk has {seq.shape[0]} mel frames; more than {k} are needed"
            raise ValueError(msg)
        seqs.append(seq)
        trimmed.append(seq.shape[0] - (0 if r.final else k))
    hift_rows, hift_seqs = [], []
    for i, r in enumerate(requests):
        pre = cache_off[i] + np.arange(r.cache_mel.shape[1]) if i in cache_off else np.zeros(0, dtype=np.int64)
        seq = np.concatenate([pre, seqs[i][: trimmed[i]]])
        if seq.shape[0]:
            hift_rows.append(i)
            hift_seqs.append(seq)
    lengths = [s.shape[0] for s in hift_seqs]
    width = max(lengths, default=0)
    width = -(-width // frame_bucket) * frame_bucket if frame_bucket > 0 else width
    live = [i for i, r in enumerate(requests) if not r.final]
    tables = [np.full((len(hift_seqs), width), zero, dtype=np.int64)]
    for row, seq in zip(tables[0], hift_seqs, strict=True):
        row[: seq.shape[0]] = seq
    tables.append(np.stack([seqs[i][trimmed[i] : trimmed[i] + k] for i in live]) if live else np.zeros((0, k), int))
    tables.append(
        np.stack([seqs[i][trimmed[i] - cache_len : trimmed[i]] for i in live])
        if live
        else np.zeros((0, cache_len), int)
    )
    # One host-to-device copy of every index table, one gather per output (each [rows, frames, 80] -> [rows, 80, frames]).
    flat = to_device(torch.from_numpy(np.concatenate([t.reshape(-1) for t in tables])), device)
    outs, at = [], 0
    for t in tables:
        n = t.size
        outs.append(pool.index_select(0, flat[at : at + n]).view(*t.shape, n_mels).transpose(1, 2).contiguous())
        at += n
    hift_mel, tails_out, caches_out = outs

    raw: list[torch.Tensor] = []
    for i in range(len(requests)):
        if i in spans:
            f, start, end = spans[i]
            raw.append(x[f, :, start:end])
        else:
            raw.append(torch.zeros(n_mels, 0, device=device))
    hift_at = {i: j for j, i in enumerate(hift_rows)}
    hift_views = hift_mel.unbind(0)
    mel: list[torch.Tensor] = []
    for i, r in enumerate(requests):
        if i in hift_at:
            pre = r.cache_mel.shape[1] if r.cache_mel is not None else 0
            mel.append(hift_views[hift_at[i]][:, pre : pre + trimmed[i]])
        else:
            mel.append(torch.zeros(n_mels, 0, device=device))
    tail: list[torch.Tensor | None] = [None] * len(requests)
    cache_mel: list[torch.Tensor | None] = [None] * len(requests)
    for i, t, c in zip(live, tails_out.unbind(0), caches_out.unbind(0), strict=True):
        tail[i], cache_mel[i] = t, c
    return StagedPass(hift_mel, hift_rows, lengths, raw, mel, tail, cache_mel)


def gather_rows(x: torch.Tensor, rows: list[int], starts: list[int], width: int) -> torch.Tensor:
    """[len(rows), C, width]: `x[rows[j], :, starts[j] : starts[j] + width]` of a [B, C, N] tensor, in one gather."""
    batch, channels, n = x.shape
    idx = np.asarray(rows, dtype=np.int64)[:, None] * n + np.asarray(starts, dtype=np.int64)[:, None]
    idx = torch.from_numpy((idx + np.arange(width)[None, :]).reshape(-1))
    flat = x.transpose(1, 2).reshape(batch * n, channels)
    return flat.index_select(0, to_device(idx, x.device)).view(len(rows), width, channels).transpose(1, 2)
