"""vLLM logits processor for the GLM-4-Voice interleave constraint (see interleave.py for the rules).

vLLM has two custom-processor interfaces, and `InterleaveLogitsProcessor` implements both, so the engine
adapter passes one name whatever the version and runner:

    logits_processors=["glm4voice_vllm.logits:InterleaveLogitsProcessor"]

- V1 model runner (`vllm.v1.sample.logits_processor.LogitsProcessor`): vLLM 0.26 (custom processors make
  it fall back from Model Runner V2 to V1) and 0.32+ wherever V1 runs (CPU: no triton). vLLM constructs it
  as `(vllm_config, device, is_pin_memory)` and drives `update_state(batch_update)` + `apply(logits)`.
- Model Runner V2 (`vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`, vLLM >= 0.32, the GPU
  default): constructed as `(vllm_config, req_states)` and driven by `add_request(req_idx, params)`,
  `apply_staged_writes()` and `apply(logits, ctx)`. Both runners load the same `logits_processors` list,
  and each checks that the class subclasses its own base, which this class does.

Bad params never reach the sampler: `validate_params` (run by the frontend at admission) raises ValueError,
which vLLM turns into a per-request error. The worker re-checks against the real vocabulary and, as a last
resort, leaves such a request unconstrained with an error log: raising there would kill the engine core.

The mask is built on the device with broadcast comparisons and one scatter; the only Python loop is over
the constrained rows (V1) to read each request's output count, never over the vocabulary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.logger import init_logger
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality
from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor

from glm4voice_vllm.interleave import MAX_EOS_IDS, MAX_FORCED_TEXT, InterleaveParams, InterleaveState, num_valid_tokens

try:  # vLLM >= 0.32; 0.26 has no Model Runner V2 interface for custom processors
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as MRV2LogitsProcessor
except ImportError:  # pragma: no cover - depends on the installed vLLM
    MRV2LogitsProcessor = None

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.sampling_params import SamplingParams

logger = init_logger(__name__)

_BASES: tuple[type, ...] = (V1LogitsProcessor,) + ((MRV2LogitsProcessor,) if MRV2LogitsProcessor else ())


def mask_outside(logits: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, ids: torch.Tensor) -> None:
    """In place: row r of `logits` keeps only [lo[r], hi[r]) and the ids in ids[r]; the rest becomes -inf.

    ids: [rows, k]; entries < 0 or >= vocab are padding. They are sent to an extra dummy column, so one
    scatter sets every listed id without a per-id loop and without ever indexing out of bounds.
    """
    vocab = logits.shape[-1]
    cols = torch.arange(vocab + 1, device=logits.device)
    blocked = (cols < lo[:, None]) | (cols >= hi[:, None])
    ids = torch.where((ids < 0) | (ids >= vocab), vocab, ids)
    blocked.scatter_(1, ids, False)
    logits.masked_fill_(blocked[:, :vocab], float("-inf"))


class InterleaveLogitsProcessor(*_BASES):
    """Enforces the 13-text / 26-audio pattern (and forced text) for requests with extra_args["glm4voice"]."""

    def __init__(self, vllm_config: VllmConfig, device_or_req_states: Any, is_pin_memory: bool | None = None):
        model_config = vllm_config.model_config
        vocab = model_config.get_vocab_size()
        num_valid = num_valid_tokens(model_config.hf_config, model_config.model) or vocab
        if hasattr(device_or_req_states, "total_len"):  # Model Runner V2 passes LogitsProcRequestState
            self._impl: _V1Rows | _MRV2Slots = _MRV2Slots(
                device_or_req_states, vocab, num_valid, model_config.max_model_len
            )
        else:
            self._impl = _V1Rows(torch.device(device_or_req_states), vocab, num_valid)

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        InterleaveParams.from_extra_args(sampling_params.extra_args)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token wins, so greedy requests need it too

    # V1 runner
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        self._impl.update_state(batch_update)

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        return self._impl.apply(logits, ctx)

    # Model Runner V2
    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        return self._impl.add_request(req_idx, sampling_params)

    def apply_staged_writes(self) -> None:
        self._impl.apply_staged_writes()


def _worker_params(extra_args: dict | None, vocab: int, num_valid: int, where: str) -> InterleaveParams | None:
    """Params re-checked against the loaded model; None (unconstrained, logged) instead of raising."""
    try:
        params = InterleaveParams.from_extra_args(extra_args, vocab_size=vocab)
        return None if params is None else params.restricted_to(num_valid)
    except ValueError as e:  # only reachable when the frontend's bound differs from this model's vocabulary
        logger.error(
            "glm4voice interleave params rejected in the worker (%s), request left unconstrained: %s", where, e
        )
        return None


class _V1Rows:
    """V1 runner: state per persistent-batch row; the output count comes from vLLM's live output list."""

    def __init__(self, device: torch.device, vocab: int, num_valid: int) -> None:
        self.device = device
        self.vocab = vocab
        self.num_valid = num_valid
        # row -> (state, the request's output token list, which vLLM appends to in place)
        self.rows: dict[int, tuple[InterleaveState, list[int]]] = {}

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for row in batch_update.removed:
            self.rows.pop(row, None)
        for row, params, _prompt_ids, output_ids in batch_update.added:
            parsed = _worker_params(params.extra_args, self.vocab, self.num_valid, f"row {row}")
            if parsed is None:
                self.rows.pop(row, None)  # the row may still hold a previous request's state
            else:
                self.rows[row] = (InterleaveState(parsed), output_ids)
        for a, b, direction in batch_update.moved:
            entry_a, entry_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if entry_a is not None:
                self.rows[b] = entry_a
            if entry_b is not None and direction == MoveDirectionality.SWAP:
                self.rows[a] = entry_b

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        if not self.rows:
            return logits  # fast path: nobody in the batch uses the constraint
        allowed = [(row, state.allowed(len(out))) for row, (state, out) in self.rows.items()]
        width = max(1, max(len(a.ids) for _, a in allowed))
        host = torch.full((len(allowed), 3 + width), -1, dtype=torch.int64)
        host[:, :3] = torch.tensor([(row, a.lo, a.hi) for row, a in allowed], dtype=torch.int64)
        for i, (_, a) in enumerate(allowed):
            if a.ids:
                host[i, 3 : 3 + len(a.ids)] = torch.tensor(a.ids, dtype=torch.int64)
        dev = host.to(logits.device, non_blocking=True)  # one small copy per step
        row_idx = dev[:, 0]
        sub = logits.index_select(0, row_idx)
        mask_outside(sub, dev[:, 1], dev[:, 2], dev[:, 3:])
        logits.index_copy_(0, row_idx, sub)
        return logits

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        raise RuntimeError("add_request is the Model Runner V2 interface; this instance runs under V1")

    def apply_staged_writes(self) -> None:
        raise RuntimeError("apply_staged_writes is the Model Runner V2 interface; this instance runs under V1")


# Columns of the Model Runner V2 per-slot params table.
_ACTIVE, _T, _A, _TLO, _THI, _ALO, _AHI, _EOS_TEXT, _FORCED, _TEXT_END, _MIN, _MAX = range(12)


class _MRV2Slots:
    """Model Runner V2: params per request slot in device tables; the state machine runs on the device.

    The output count of each logits row is total_len - prompt_len + expanded_local_pos, read on the
    device (the same count vLLM's built-in bad-words processor uses), so there is no host sync per step.
    """

    def __init__(self, req_states: Any, vocab: int, num_valid: int, max_model_len: int) -> None:
        self.req_states = req_states
        self.device = torch.device(req_states.device)
        self.vocab = vocab
        self.num_valid = num_valid
        n = req_states.max_num_reqs
        self.params_np = np.zeros((n, 12), dtype=np.int64)
        self.eos_np = np.full((n, MAX_EOS_IDS), -1, dtype=np.int64)
        self.params = torch.zeros((n, 12), dtype=torch.int64, device=self.device)
        self.eos = torch.full((n, MAX_EOS_IDS), -1, dtype=torch.int64, device=self.device)
        # Forced text can never be longer than the model's context, which bounds this table.
        self.forced_width = min(MAX_FORCED_TEXT, max_model_len)
        self.forced: torch.Tensor | None = None  # allocated with the first forced-text request
        self.dirty = False
        self.pending_forced: dict[int, tuple[int, ...]] = {}

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        # Slots are recycled without a removal call: every field of the slot is rewritten here.
        params = _worker_params(sampling_params.extra_args, self.vocab, self.num_valid, f"slot {req_idx}")
        row = self.params_np[req_idx]
        row[:] = 0
        self.eos_np[req_idx] = -1
        self.pending_forced.pop(req_idx, None)
        self.dirty = True
        if params is None:
            return False
        state = InterleaveState(params)
        row[_ACTIVE] = 1
        row[_T], row[_A] = params.pattern
        row[_TLO], row[_THI] = params.text_range
        row[_ALO], row[_AHI] = params.audio_range
        row[_EOS_TEXT] = int(params.eos_at_text_slots)
        row[_FORCED] = int(params.forced_text is not None)
        row[_TEXT_END] = state.text_end or 0
        row[_MIN] = params.min_audio_after_text or 0
        row[_MAX] = -1 if params.max_audio_after_text is None else params.max_audio_after_text
        self.eos_np[req_idx, : len(params.eos)] = params.eos
        if params.forced_text:
            self.pending_forced[req_idx] = params.forced_text[: self.forced_width]
        return True

    def apply_staged_writes(self) -> None:
        if not self.dirty:
            return
        self.params.copy_(torch.from_numpy(self.params_np))
        self.eos.copy_(torch.from_numpy(self.eos_np))
        if self.pending_forced and self.forced is None:
            self.forced = torch.zeros((len(self.params_np), self.forced_width), dtype=torch.int64, device=self.device)
        for slot, ids in self.pending_forced.items():
            assert self.forced is not None
            self.forced[slot, : len(ids)].copy_(torch.tensor(ids, dtype=torch.int64))
        self.pending_forced.clear()
        self.dirty = False

    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        if not self.params_np[ctx.idx_mapping_np, _ACTIVE].any():
            return logits  # fast path, decided on the host without touching the device
        slot = ctx.expanded_idx_mapping.long()
        rs = self.req_states
        n = (rs.total_len.gpu[slot].long() - rs.prompt_len.gpu[slot].long() + ctx.expanded_local_pos.long()).clamp_(
            min=0
        )
        lo, hi, ids = self.allowed(slot, n, logits.shape[-1])
        mask_outside(logits, lo, hi, ids)
        return logits

    def allowed(self, slot: torch.Tensor, n: torch.Tensor, vocab: int) -> tuple[torch.Tensor, ...]:
        """InterleaveState.allowed(n), vectorised over rows: (lo, hi, ids[rows, MAX_EOS_IDS + 1])."""
        p = self.params[slot]
        active, forced = p[:, _ACTIVE] == 1, p[:, _FORCED] == 1
        cycle = p[:, _T] + p[:, _A]
        group, pos = n // cycle.clamp(min=1), n % cycle.clamp(min=1)
        text_slot = pos < p[:, _T]
        trailing = forced & (n >= p[:, _TEXT_END])
        n_trailing = n - p[:, _TEXT_END]
        eos_only = trailing & (p[:, _MAX] >= 0) & (n_trailing >= p[:, _MAX])
        forced_slot = forced & ~trailing & text_slot
        free_text = ~forced & text_slot

        zero = torch.zeros_like(n)
        lo = torch.where(free_text, p[:, _TLO], p[:, _ALO])
        hi = torch.where(free_text, p[:, _THI], p[:, _AHI])
        lo = torch.where(forced_slot | eos_only, zero, lo)
        hi = torch.where(forced_slot | eos_only, zero, hi)
        # Inactive rows (requests without the constraint) keep everything.
        lo = torch.where(active, lo, zero)
        hi = torch.where(active, hi, torch.full_like(hi, vocab))

        eos_ok = active & (eos_only | (trailing & (n_trailing >= p[:, _MIN])) | (free_text & (p[:, _EOS_TEXT] == 1)))
        eos = torch.where(eos_ok[:, None], self.eos[slot], -1)
        forced_id = torch.full_like(n, -1)
        if self.forced is not None:
            k = (group * p[:, _T] + pos).clamp(0, self.forced_width - 1)
            forced_id = torch.where(active & forced_slot, self.forced[slot, k], forced_id)
        return lo, hi, torch.cat([eos, forced_id[:, None]], dim=1)
