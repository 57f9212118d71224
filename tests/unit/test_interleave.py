"""The GLM-4-Voice interleave constraint: params validation, the state machine, and both vLLM processor
interfaces driven with fake batches (Model Runner V2 cannot run on this CPU machine: no triton)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from glm4voice_vllm.interleave import (
    GLM4VOICE_VOCAB_SIZE,
    MAX_FORCED_TEXT,
    InterleaveParams,
    InterleaveState,
    SlotKind,
    num_valid_tokens,
)

TEXT, AUDIO, EOS = [0, 151329], [152353, 168737], [151336]


def params(**kw) -> InterleaveParams:
    raw = {"text_range": TEXT, "audio_range": AUDIO, "eos": EOS} | kw
    return InterleaveParams.parse(raw)


def kinds(state: InterleaveState, count: int) -> list[SlotKind]:
    return [state.allowed(n).kind for n in range(count)]


# --- the pattern ----------------------------------------------------------------------------------------


def test_default_pattern_is_13_text_26_audio_from_the_first_token():
    state = InterleaveState(params())
    expected = ([SlotKind.TEXT] * 13 + [SlotKind.AUDIO] * 26) * 3
    assert kinds(state, 39 * 3) == expected
    text, audio = state.allowed(0), state.allowed(13)
    assert (text.lo, text.hi) == (0, 151329) and (audio.lo, audio.hi) == (152353, 168737)
    assert 151328 in text and 151329 not in text and 152353 not in text
    assert 152353 in audio and 168736 in audio and 168737 not in audio and 100 not in audio


def test_eos_only_at_text_slots_and_only_when_allowed():
    state = InterleaveState(params())
    assert 151336 in state.allowed(0) and 151336 in state.allowed(12) and 151336 not in state.allowed(13)
    assert all(151336 not in state.allowed(n) for n in range(13, 39))
    strict = InterleaveState(params(eos_at_text_slots=False))
    assert all(151336 not in strict.allowed(n) for n in range(200))


def test_custom_pattern():
    state = InterleaveState(params(pattern=[2, 3]))
    assert kinds(state, 10) == [SlotKind.TEXT] * 2 + [SlotKind.AUDIO] * 3 + [SlotKind.TEXT] * 2 + [SlotKind.AUDIO] * 3


# --- forced text ----------------------------------------------------------------------------------------


def test_forced_text_is_emitted_in_order_with_a_last_short_group():
    forced = list(range(1000, 1020))  # 20 ids: a full group of 13, then a short group of 7
    state = InterleaveState(params(forced_text=forced))
    assert state.text_end == 39 + 7
    got = [state.allowed(n) for n in range(60)]
    assert [a.kind for a in got[:13]] == [SlotKind.FORCED_TEXT] * 13
    assert [a.ids for a in got[:13]] == [(t,) for t in forced[:13]]
    assert all(a.kind is SlotKind.AUDIO for a in got[13:39])
    assert [a.ids for a in got[39:46]] == [(t,) for t in forced[13:]]
    assert all(a.kind is SlotKind.TRAILING_AUDIO for a in got[46:])
    # A forced slot allows exactly its id: no other text, no audio, no eos.
    assert 1001 not in got[0] and 152353 not in got[0] and 151336 not in got[0]


@pytest.mark.parametrize(("n_text", "text_end"), [(0, 0), (1, 1), (12, 12), (13, 13), (14, 40), (26, 52), (27, 79)])
def test_where_the_forced_text_ends(n_text: int, text_end: int):
    state = InterleaveState(params(forced_text=list(range(5, 5 + n_text))))
    assert state.text_end == text_end
    n_forced = sum(state.allowed(n).kind is SlotKind.FORCED_TEXT for n in range(text_end + 5))
    assert n_forced == n_text
    assert state.allowed(text_end).kind is SlotKind.TRAILING_AUDIO


def test_min_and_max_trailing_audio():
    state = InterleaveState(params(forced_text=[7, 8, 9], min_audio_after_text=5, max_audio_after_text=10))
    trailing = [state.allowed(3 + m) for m in range(12)]
    assert all(151336 not in a and 152353 in a for a in trailing[:5])  # before min: audio only
    assert all(151336 in a and 152353 in a for a in trailing[5:10])  # between: the model may end
    assert trailing[10].kind is SlotKind.EOS and trailing[10].ids == (151336,) and 152353 not in trailing[10]
    assert trailing[11].kind is SlotKind.EOS


def test_trailing_audio_defaults_and_edge_values():
    free = InterleaveState(params(forced_text=[7]))  # no min/max: eos allowed at once, audio never forced off
    assert 151336 in free.allowed(1) and all(free.allowed(1 + m).kind is SlotKind.TRAILING_AUDIO for m in range(500))
    immediate = InterleaveState(params(forced_text=[7], max_audio_after_text=0))
    assert immediate.allowed(1).kind is SlotKind.EOS
    exact = InterleaveState(params(forced_text=[7], min_audio_after_text=4, max_audio_after_text=4))
    assert [exact.allowed(1 + m).kind for m in range(5)] == [SlotKind.TRAILING_AUDIO] * 4 + [SlotKind.EOS]
    assert 151336 not in exact.allowed(4)
    nothing = InterleaveState(params(forced_text=[], max_audio_after_text=3))  # speech with no text at all
    assert kinds(nothing, 4) == [SlotKind.TRAILING_AUDIO] * 3 + [SlotKind.EOS]


def test_first_violation():
    state = InterleaveState(params(forced_text=[7, 8], max_audio_after_text=2))
    assert state.first_violation([7, 8, 152353, 168736, 151336]) is None
    assert state.first_violation([7, 9]) == 1
    assert state.first_violation([7, 8, 152353, 151336]) is None  # eos allowed (no min)
    assert state.first_violation([7, 8, 100]) == 2


# --- validation -----------------------------------------------------------------------------------------


def test_absent_key_means_untouched():
    assert InterleaveParams.from_extra_args(None) is None
    assert InterleaveParams.from_extra_args({}) is None
    assert InterleaveParams.from_extra_args({"other": 1}) is None
    got = InterleaveParams.from_extra_args({"glm4voice": {"text_range": TEXT, "audio_range": AUDIO, "eos": EOS}})
    assert got == params() and got.pattern == (13, 26) and got.forced_text is None and got.eos_at_text_slots


def test_json_round_trip():
    raw = json.loads(json.dumps({"text_range": TEXT, "audio_range": AUDIO, "eos": EOS, "forced_text": [1, 2]}))
    assert InterleaveParams.parse(raw).forced_text == (1, 2)


MIN_OVER_MAX = {"text_range": TEXT, "audio_range": AUDIO, "eos": EOS, "forced_text": [1]} | {
    "min_audio_after_text": 5,
    "max_audio_after_text": 4,
}
BAD = [
    ("not-a-dict", "must be an object"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": EOS, "patern": [1, 2]}, "unknown keys"),
    ({"audio_range": AUDIO, "eos": EOS}, "text_range is required"),
    ({"text_range": TEXT, "audio_range": AUDIO}, "eos is required"),
    ({"text_range": [5, 5], "audio_range": AUDIO, "eos": EOS}, "is empty"),
    ({"text_range": [10, 5], "audio_range": AUDIO, "eos": EOS}, "is empty"),
    ({"text_range": TEXT, "audio_range": [152353, GLM4VOICE_VOCAB_SIZE + 1], "eos": EOS}, "outside"),
    ({"text_range": [-1, 5], "audio_range": AUDIO, "eos": EOS}, "outside"),
    ({"text_range": [0, 1.5], "audio_range": AUDIO, "eos": EOS}, "must be an integer"),
    ({"text_range": "0-5", "audio_range": AUDIO, "eos": EOS}, r"must be \[lo, hi\)"),
    ({"text_range": [0, 160000], "audio_range": AUDIO, "eos": EOS}, "overlaps"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": []}, "at least one"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": [5]}, "inside text_range"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": [151336] * 9}, "at most 8"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": [GLM4VOICE_VOCAB_SIZE]}, "outside"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": EOS, "pattern": [0, 26]}, "outside"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": EOS, "pattern": [13]}, "text_slots, audio_slots"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": EOS, "pattern": [True, 26]}, "must be an integer"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": EOS, "forced_text": [1] * (MAX_FORCED_TEXT + 1)}, "at most"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": EOS, "forced_text": [152353]}, "must lie in text_range"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": EOS, "forced_text": [1, "2"]}, "must be an integer"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": EOS, "forced_text": "hello"}, "list of token ids"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": EOS, "min_audio_after_text": 3}, "need forced_text"),
    (MIN_OVER_MAX, "exceeds"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": EOS, "forced_text": [1], "max_audio_after_text": -1}, "outside"),
    ({"text_range": TEXT, "audio_range": AUDIO, "eos": EOS, "eos_at_text_slots": "yes"}, "must be a boolean"),
]


@pytest.mark.parametrize(("raw", "message"), BAD)
def test_invalid_params_raise_a_clear_value_error(raw, message: str):
    with pytest.raises(ValueError, match=message):
        InterleaveParams.from_extra_args({"glm4voice": raw})


def test_restricted_to_the_loaded_model():
    wide = params(audio_range=[152353, GLM4VOICE_VOCAB_SIZE])
    assert wide.restricted_to(168737).audio_range == (152353, 168737)  # the padding is masked anyway
    with pytest.raises(ValueError, match="padding"):
        params(audio_range=[168737, GLM4VOICE_VOCAB_SIZE]).restricted_to(168737)
    with pytest.raises(ValueError, match="padding"):
        params(eos=[168800]).restricted_to(168737)


def test_num_valid_tokens(tmp_path):
    cfg = SimpleNamespace(padded_vocab_size=168960, glm4voice_num_valid_tokens=168737)
    assert num_valid_tokens(cfg) == 168737
    with pytest.raises(ValueError):
        num_valid_tokens(SimpleNamespace(padded_vocab_size=168960, glm4voice_num_valid_tokens="x"))
    plain = SimpleNamespace(padded_vocab_size=168960)
    assert num_valid_tokens(plain, tmp_path) is None  # nothing known: nothing masked
    added = {str(i): {"content": f"<|audio_{i}|>"} for i in (151329, 152353, 168736)}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added}))
    assert num_valid_tokens(plain, tmp_path) == 168737
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    assert num_valid_tokens(plain, tmp_path) is None


# --- the vLLM processors, with fake batches on a small vocabulary ----------------------------------------

V, NV = 64, 56  # vocabulary, valid ids (56..63 are padding)
SMALL = {"text_range": [0, 20], "audio_range": [30, 60], "eos": [25, 26], "pattern": [3, 4]}
SMALL_CASES = [
    SMALL,
    SMALL | {"eos_at_text_slots": False},
    SMALL | {"forced_text": [1, 2, 3, 4, 5], "min_audio_after_text": 2, "max_audio_after_text": 6},
    SMALL | {"forced_text": [], "max_audio_after_text": 3},
    SMALL | {"forced_text": [7]},
]


def _vllm_config(max_model_len: int = 512):
    hf = SimpleNamespace(padded_vocab_size=V, glm4voice_num_valid_tokens=NV)
    model = SimpleNamespace(get_vocab_size=lambda: V, hf_config=hf, model="/nonexistent", max_model_len=max_model_len)
    return SimpleNamespace(model_config=model)


def _allowed_ids(raw: dict, n: int) -> set[int]:
    parsed = InterleaveParams.parse(raw, vocab_size=V).restricted_to(NV)
    a = InterleaveState(parsed).allowed(n)
    return set(range(a.lo, a.hi)) | set(a.ids)


def _finite(row) -> set[int]:
    import torch

    return set(torch.isfinite(row).nonzero().flatten().tolist())


def test_processor_implements_both_vllm_interfaces():
    pytest.importorskip("vllm")
    from glm4voice_vllm.logits import InterleaveLogitsProcessor, MRV2LogitsProcessor
    from vllm.sampling_params import SamplingParams
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1

    assert issubclass(InterleaveLogitsProcessor, V1)
    assert MRV2LogitsProcessor is not None and issubclass(InterleaveLogitsProcessor, MRV2LogitsProcessor)
    InterleaveLogitsProcessor.validate_params(SamplingParams(extra_args=None))
    InterleaveLogitsProcessor.validate_params(
        SamplingParams(extra_args={"glm4voice": {"text_range": TEXT, "audio_range": AUDIO, "eos": EOS}})
    )
    with pytest.raises(ValueError, match="pattern"):
        InterleaveLogitsProcessor.validate_params(SamplingParams(extra_args={"glm4voice": SMALL | {"pattern": [0, 1]}}))


def test_v1_processor_follows_the_state_machine_through_batch_changes():
    torch = pytest.importorskip("torch")
    pytest.importorskip("vllm")
    from glm4voice_vllm.logits import InterleaveLogitsProcessor
    from vllm.sampling_params import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

    proc = InterleaveLogitsProcessor(_vllm_config(), torch.device("cpu"), False)
    assert not proc.is_argmax_invariant()
    raws = [SMALL_CASES[0], None, SMALL_CASES[2], SMALL_CASES[3]]
    outs: list[list[int]] = [[] for _ in raws]
    added = [
        (i, SamplingParams(extra_args=None if r is None else {"glm4voice": r}), [1, 2], outs[i])
        for i, r in enumerate(raws)
    ]
    proc.update_state(BatchUpdate(batch_size=4, removed=[], added=added, moved=[]))
    rows = list(range(4))  # row -> request index
    gen = torch.Generator().manual_seed(0)
    for step in range(20):
        if step == 7:  # swap rows 0 and 2, then move row 3 into row 1 after removing request 1
            proc.update_state(BatchUpdate(4, removed=[], added=[], moved=[(0, 2, MoveDirectionality.SWAP)]))
            rows[0], rows[2] = rows[2], rows[0]
            proc.update_state(BatchUpdate(3, removed=[1], added=[], moved=[(3, 1, MoveDirectionality.UNIDIRECTIONAL)]))
            rows = [rows[0], rows[3], rows[2]]
        logits = torch.randn(len(rows), V, generator=gen)
        before = logits.clone()
        out = proc.apply(logits)
        for row, req in enumerate(rows):
            if raws[req] is None:
                assert torch.equal(out[row], before[row])
            else:
                assert _finite(out[row]) == _allowed_ids(raws[req], len(outs[req])), (step, req)
            outs[req].append(int(out[row].argmax()))  # vLLM appends to the same list object


def test_v1_processor_fast_path_and_bad_params_in_the_worker():
    torch = pytest.importorskip("torch")
    pytest.importorskip("vllm")
    from glm4voice_vllm.logits import InterleaveLogitsProcessor
    from vllm.sampling_params import SamplingParams
    from vllm.v1.sample.logits_processor import BatchUpdate

    proc = InterleaveLogitsProcessor(_vllm_config(), torch.device("cpu"), False)
    padding_eos = {"glm4voice": SMALL | {"eos": [60]}}  # valid for the frontend's bound, padding here
    proc.update_state(BatchUpdate(1, removed=[], added=[(0, SamplingParams(extra_args=padding_eos), [], [])], moved=[]))
    logits = torch.randn(1, V)
    assert proc.apply(logits.clone()).equal(logits)  # left unconstrained, and nothing raised


def _mrv2(max_num_reqs: int = 4, max_model_len: int = 512):
    import torch
    from glm4voice_vllm.logits import InterleaveLogitsProcessor

    req_states = SimpleNamespace(
        device=torch.device("cpu"),
        max_num_reqs=max_num_reqs,
        vocab_size=V,
        total_len=SimpleNamespace(gpu=torch.zeros(max_num_reqs, dtype=torch.int32)),
        prompt_len=SimpleNamespace(gpu=torch.zeros(max_num_reqs, dtype=torch.int32)),
    )
    return InterleaveLogitsProcessor(_vllm_config(max_model_len), req_states), req_states


def _ctx(slots: list[int], local_pos: list[int] | None = None):
    import numpy as np
    import torch

    return SimpleNamespace(
        expanded_idx_mapping=torch.tensor(slots, dtype=torch.int32),
        idx_mapping_np=np.array(sorted(set(slots)), dtype=np.int32),
        expanded_local_pos=torch.tensor(local_pos or [0] * len(slots), dtype=torch.int32),
    )


@pytest.mark.parametrize("raw", SMALL_CASES)
def test_mrv2_processor_matches_the_state_machine(raw: dict):
    torch = pytest.importorskip("torch")
    pytest.importorskip("vllm")
    from vllm.sampling_params import SamplingParams

    proc, rs = _mrv2()
    assert proc.add_request(2, SamplingParams(extra_args={"glm4voice": raw})) is True
    assert proc.add_request(0, SamplingParams()) is False
    proc.apply_staged_writes()
    rs.prompt_len.gpu[:] = torch.tensor([5, 0, 17, 0], dtype=torch.int32)
    for n in range(60):
        rs.total_len.gpu[:] = rs.prompt_len.gpu + n
        logits = torch.randn(2, V)
        before = logits.clone()
        out = proc.apply(logits, _ctx([2, 0]))
        assert _finite(out[0]) == _allowed_ids(raw, n), n
        assert torch.equal(out[1], before[1])


def test_mrv2_processor_rows_of_draft_tokens_and_slot_reuse():
    torch = pytest.importorskip("torch")
    pytest.importorskip("vllm")
    from vllm.sampling_params import SamplingParams

    proc, rs = _mrv2()
    raw = SMALL_CASES[2]
    proc.add_request(1, SamplingParams(extra_args={"glm4voice": raw}))
    proc.apply_staged_writes()
    rs.prompt_len.gpu[1], rs.total_len.gpu[1] = 3, 3 + 4
    out = proc.apply(torch.randn(3, V), _ctx([1, 1, 1], [0, 1, 2]))  # one request, three speculative rows
    for row in range(3):
        assert _finite(out[row]) == _allowed_ids(raw, 4 + row)

    # The slot is recycled for a request without the constraint: no trace of the old one may remain.
    assert proc.add_request(1, SamplingParams(extra_args={"unrelated": True})) is False
    proc.apply_staged_writes()
    logits = torch.randn(1, V)
    assert proc.apply(logits.clone(), _ctx([1])).equal(logits)


def test_mrv2_processor_never_raises_on_bad_params_in_the_worker():
    torch = pytest.importorskip("torch")
    pytest.importorskip("vllm")
    from vllm.sampling_params import SamplingParams

    proc, _ = _mrv2(max_model_len=4)
    assert proc.add_request(0, SamplingParams(extra_args={"glm4voice": SMALL | {"forced_text": [70]}})) is False
    assert proc.add_request(0, SamplingParams(extra_args={"glm4voice": {"pattern": "x"}})) is False
    # Forced text longer than the context is cut to it instead of overflowing the device table.
    assert proc.add_request(1, SamplingParams(extra_args={"glm4voice": SMALL | {"forced_text": [1] * 50}})) is True
    proc.apply_staged_writes()
    assert proc._impl.forced is not None and proc._impl.forced.shape == (4, 4)
    assert _finite(proc.apply(torch.randn(1, V), _ctx([1]))[0]) == {1}
