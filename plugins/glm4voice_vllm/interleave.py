"""GLM-4-Voice interleave constraint: the per-request params schema and the state machine.

GLM-4-Voice replies with 13 text tokens, then 26 audio tokens, and repeats; when the text runs out, the
last text group is shorter and only audio follows until the end-of-turn token. The real model does this
by itself. The constraint makes any weights (the random-weight default, benchmark dummies) follow the
same layout, and can force an exact text so the speech is built on known words.

A request switches it on with `SamplingParams.extra_args = {"glm4voice": {...}}`:

    text_range: [lo, hi)       ids allowed at free text slots, e.g. [0, 151329]
    audio_range: [lo, hi)      ids allowed at audio slots, e.g. [152353, 168737]
    eos: [ids]                 end-of-turn ids, e.g. [151336] (at most 8); also the stop_token_ids
    pattern: [13, 26]          text slots, audio slots per cycle (default [13, 26])
    forced_text: [ids] | None  exact text, one id per text slot; when it runs out, the current text group
                               ends early and only audio slots follow (the trailing audio)
    min_audio_after_text       with forced_text: eos is not allowed before this many trailing audio tokens
    max_audio_after_text       with forced_text: at this many trailing audio tokens only eos is allowed
    eos_at_text_slots: bool    without forced_text: whether eos may be sampled at text slots (default true)

Without forced_text, eos is never allowed at audio slots, so every audio group is complete.

The state is a pure function of how many output tokens the request has emitted (the reply starts at a
text slot, whatever the prompt), so it survives preemption, async scheduling placeholders and slot moves
without tracking what was sampled. The eos ids should also be the request's stop_token_ids.

This module imports neither vLLM nor torch: the frontend validates with it, and the unit tests run it alone.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXTRA_ARGS_KEY = "glm4voice"
# GLM-4-Voice's reply layout: 13 text tokens, then 26 audio tokens, repeated (the model's trained pattern). Declared
# here once; the server reads it from this package.
TEXT_SLOTS = 13
AUDIO_SLOTS = 26
INTERLEAVE_PATTERN = (TEXT_SLOTS, AUDIO_SLOTS)
# GLM-4-Voice-9B's padded vocabulary: the bound the frontend validates against, where the model's
# config is out of reach (validate_params is a classmethod). The worker re-checks against the real model.
GLM4VOICE_VOCAB_SIZE = 168960
MAX_FORCED_TEXT = 8192
MAX_EOS_IDS = 8
MAX_PATTERN_SLOTS = 4096
MAX_TRAILING_AUDIO = 1 << 20

_KEYS = frozenset(
    {
        "text_range",
        "audio_range",
        "eos",
        "pattern",
        "forced_text",
        "min_audio_after_text",
        "max_audio_after_text",
        "eos_at_text_slots",
    }
)


class SlotKind(enum.Enum):
    TEXT = "text"  # free text (maybe eos)
    AUDIO = "audio"  # an audio slot inside the pattern
    FORCED_TEXT = "forced_text"  # exactly the next forced text id
    TRAILING_AUDIO = "trailing_audio"  # audio after the forced text (maybe eos)
    EOS = "eos"  # only eos: the trailing audio reached its maximum


@dataclass(frozen=True)
class Allowed:
    """The ids allowed at one output position: the range [lo, hi) plus the single ids `ids`."""

    kind: SlotKind
    lo: int
    hi: int
    ids: tuple[int, ...] = ()

    def __contains__(self, token: int) -> bool:
        return self.lo <= token < self.hi or token in self.ids


@dataclass(frozen=True)
class InterleaveParams:
    text_range: tuple[int, int]
    audio_range: tuple[int, int]
    eos: tuple[int, ...]
    pattern: tuple[int, int] = INTERLEAVE_PATTERN
    forced_text: tuple[int, ...] | None = None
    min_audio_after_text: int | None = None
    max_audio_after_text: int | None = None
    eos_at_text_slots: bool = True

    @classmethod
    def from_extra_args(
        cls, extra_args: Mapping[str, Any] | None, *, vocab_size: int = GLM4VOICE_VOCAB_SIZE
    ) -> InterleaveParams | None:
        """The request's params, or None when it does not use the constraint; ValueError when invalid."""
        if not extra_args or EXTRA_ARGS_KEY not in extra_args:
            return None
        return cls.parse(extra_args[EXTRA_ARGS_KEY], vocab_size=vocab_size)

    @classmethod
    def parse(cls, raw: Any, *, vocab_size: int = GLM4VOICE_VOCAB_SIZE) -> InterleaveParams:
        """Validate client-supplied params (JSON-like values) and build them; ValueError on any problem."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"extra_args.{EXTRA_ARGS_KEY} must be an object, got {type(raw).__name__}")  # noqa: TRY004
        unknown = sorted(set(map(str, raw)) - _KEYS)
        if unknown:
            raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}: unknown keys {unknown}; allowed: {sorted(_KEYS)}")
        for key in ("text_range", "audio_range", "eos"):
            if raw.get(key) is None:
                raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}.{key} is required")

        text_range = _range(raw["text_range"], "text_range", vocab_size)
        audio_range = _range(raw["audio_range"], "audio_range", vocab_size)
        if text_range[0] < audio_range[1] and audio_range[0] < text_range[1]:
            raise ValueError(f"{_name('text_range')} {list(text_range)} overlaps audio_range {list(audio_range)}")
        eos = _ids(raw["eos"], "eos", vocab_size, max_len=MAX_EOS_IDS)
        if not eos:
            raise ValueError(f"{_name('eos')} must hold at least one id")
        for tok in eos:
            if text_range[0] <= tok < text_range[1] or audio_range[0] <= tok < audio_range[1]:
                raise ValueError(f"{_name('eos')} id {tok} lies inside text_range or audio_range")

        pattern_raw = raw.get("pattern", list(INTERLEAVE_PATTERN))
        if not isinstance(pattern_raw, Sequence) or isinstance(pattern_raw, str) or len(pattern_raw) != 2:
            raise ValueError(f"{_name('pattern')} must be [text_slots, audio_slots]")
        pattern = (
            _int(pattern_raw[0], "pattern[0]", 1, MAX_PATTERN_SLOTS),
            _int(pattern_raw[1], "pattern[1]", 1, MAX_PATTERN_SLOTS),
        )

        forced_raw = raw.get("forced_text")
        forced = None
        if forced_raw is not None:
            forced = _ids(forced_raw, "forced_text", vocab_size, max_len=MAX_FORCED_TEXT)
            outside = [t for t in forced if not text_range[0] <= t < text_range[1]]
            if outside:
                raise ValueError(f"{_name('forced_text')} ids must lie in text_range {list(text_range)}: {outside[:5]}")

        min_a, max_a = (
            None if raw.get(k) is None else _int(raw[k], k, 0, MAX_TRAILING_AUDIO)
            for k in ("min_audio_after_text", "max_audio_after_text")
        )
        if forced is None and (min_a is not None or max_a is not None):
            raise ValueError(f"{_name('min_audio_after_text')}/max_audio_after_text need forced_text")
        if min_a is not None and max_a is not None and min_a > max_a:
            raise ValueError(f"{_name('min_audio_after_text')}={min_a} exceeds max_audio_after_text={max_a}")

        eos_at_text = raw.get("eos_at_text_slots", True)
        if not isinstance(eos_at_text, bool):
            raise ValueError(f"{_name('eos_at_text_slots')} must be a boolean")  # noqa: TRY004
        return cls(text_range, audio_range, eos, pattern, forced, min_a, max_a, eos_at_text)

    def restricted_to(self, num_valid: int) -> InterleaveParams:
        """These params on a model whose ids >= num_valid are padding (never sampled).

        Ranges are clipped, since the model masks the padding anyway; single ids (eos, forced text) in the
        padding and ranges left empty cannot be honoured and raise ValueError.
        """
        text_range = (self.text_range[0], min(self.text_range[1], num_valid))
        audio_range = (self.audio_range[0], min(self.audio_range[1], num_valid))
        for name, (lo, hi) in (("text_range", text_range), ("audio_range", audio_range)):
            if lo >= hi:
                raise ValueError(f"{_name(name)} lies entirely in the padding ids >= {num_valid}")
        bad = [t for t in (*self.eos, *(self.forced_text or ())) if t >= num_valid]
        if bad:
            raise ValueError(f"extra_args.{EXTRA_ARGS_KEY}: ids {bad[:5]} are padding ids (>= {num_valid})")
        return InterleaveParams(
            text_range,
            audio_range,
            self.eos,
            self.pattern,
            self.forced_text,
            self.min_audio_after_text,
            self.max_audio_after_text,
            self.eos_at_text_slots,
        )


class InterleaveState:
    """Which ids a request may emit at each output position (0 = the reply's first token)."""

    def __init__(self, params: InterleaveParams) -> None:
        self.params = params
        self.text_slots, self.audio_slots = params.pattern
        self.cycle = self.text_slots + self.audio_slots
        # Output position where the forced text is over and the trailing audio starts: just after the
        # slot of the last forced id (0 for an empty forced text: audio from the start).
        self.text_end: int | None = None
        if params.forced_text is not None:
            n_text = len(params.forced_text)
            if n_text == 0:
                self.text_end = 0
            else:
                groups, within = divmod(n_text - 1, self.text_slots)
                self.text_end = groups * self.cycle + within + 1

    def allowed(self, n: int) -> Allowed:
        p = self.params
        if self.text_end is not None and n >= self.text_end:
            trailing = n - self.text_end
            if p.max_audio_after_text is not None and trailing >= p.max_audio_after_text:
                return Allowed(SlotKind.EOS, 0, 0, p.eos)
            eos = p.eos if trailing >= (p.min_audio_after_text or 0) else ()
            return Allowed(SlotKind.TRAILING_AUDIO, *p.audio_range, eos)
        group, pos = divmod(n, self.cycle)
        if pos >= self.text_slots:
            return Allowed(SlotKind.AUDIO, *p.audio_range)
        if p.forced_text is not None:
            return Allowed(SlotKind.FORCED_TEXT, 0, 0, (p.forced_text[group * self.text_slots + pos],))
        return Allowed(SlotKind.TEXT, *p.text_range, p.eos if p.eos_at_text_slots else ())

    def first_violation(self, tokens: Sequence[int]) -> int | None:
        """Index of the first token that was not allowed at its position, or None (for checking outputs)."""
        for n, tok in enumerate(tokens):
            if tok not in self.allowed(n):
                return n
        return None


def num_valid_tokens(hf_config: Any, model_dir: str | Path | None = None) -> int | None:
    """How many leading vocabulary rows are real tokens; the rest are padding that must never be sampled.

    `glm4voice_num_valid_tokens` (set by the engine adapter through hf_overrides) wins. Otherwise it is
    derived from a local tokenizer_config.json as the last added token id + 1; None when neither is known
    (then nothing is masked).
    """
    vocab = getattr(hf_config, "padded_vocab_size", None) or getattr(hf_config, "vocab_size", None)
    explicit = getattr(hf_config, "glm4voice_num_valid_tokens", None)
    if explicit is not None:
        if isinstance(explicit, bool) or not isinstance(explicit, int) or explicit <= 0:
            raise ValueError(f"glm4voice_num_valid_tokens must be a positive int, got {explicit!r}")
        return min(explicit, vocab) if vocab else explicit
    if model_dir is None or not (path := Path(model_dir) / "tokenizer_config.json").is_file():
        return None
    try:
        added = json.loads(path.read_text()).get("added_tokens_decoder") or {}
        last = max(int(k) for k in added)
    except (ValueError, OSError, AttributeError):
        return None  # an unreadable tokenizer config only costs the masking, never the engine
    return last + 1 if vocab is None or last + 1 < vocab else None


# Every problem, wrong types included, is a ValueError on purpose: vLLM turns ValueError from validate_params
# into a per-request 400, whereas a TypeError would surface as an internal error.


def _name(key: str) -> str:
    return f"extra_args.{EXTRA_ARGS_KEY}.{key}"


def _int(value: Any, key: str, lo: int, hi: int) -> int:
    # bool is an int subclass: true/false in JSON must not pass as 1/0.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{_name(key)} must be an integer, got {value!r}")  # noqa: TRY004
    if not lo <= value <= hi:
        raise ValueError(f"{_name(key)}={value} is outside [{lo}, {hi}]")
    return value


def _range(value: Any, key: str, vocab_size: int) -> tuple[int, int]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"{_name(key)} must be [lo, hi)")
    lo, hi = _int(value[0], f"{key}[0]", 0, vocab_size), _int(value[1], f"{key}[1]", 0, vocab_size)
    if lo >= hi:
        raise ValueError(f"{_name(key)} [{lo}, {hi}) is empty")
    return lo, hi


def _ids(value: Any, key: str, vocab_size: int, *, max_len: int) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ValueError(f"{_name(key)} must be a list of token ids")  # noqa: TRY004
    if len(value) > max_len:
        raise ValueError(f"{_name(key)} holds {len(value)} ids; at most {max_len}")
    ids = tuple(value)
    # One cheap pass for the common valid case; the slow pass only names the first bad element.
    if all(type(v) is int and 0 <= v < vocab_size for v in ids):
        return ids
    return tuple(_int(v, f"{key}[{i}]", 0, vocab_size - 1) for i, v in enumerate(ids))
