"""Transcription and translation output formats from transcribed segments: verbose_json, srt, vtt, logprobs."""

from __future__ import annotations

import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass, field

from glm4voice_api.engine.base import TokenLogprob
from glm4voice_api.protocol import transcription as wire
from glm4voice_api.text.tokenizer import GLM4Tokenizer


@dataclass
class SegmentText:
    """One segment's result: its times (from the VAD), text, text ids and their logprobs."""

    start: float
    end: float
    speech_prob: float
    text: str = ""
    text_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    generated: int = 0


def join_texts(texts: list[str]) -> str:
    """Segments' texts as one transcript: a space between words, none between CJK characters."""
    out = ""
    for text in (t.strip() for t in texts):
        if not text:
            continue
        if out and (out[-1].isascii() or text[0].isascii()):
            out += " "
        out += text
    return out


def verbose(
    results: list[SegmentText], *, task: str, language: str, duration: float, temperature: float
) -> wire.TranscriptionVerboseResponse:
    segments = []
    for r in results:
        text = r.text.strip()
        if not text:
            continue
        raw = text.encode()
        segments.append(
            wire.TranscriptionSegment(
                id=len(segments),
                seek=round(r.start * 100),  # Whisper's seek: the offset in 10 ms frames
                start=round(r.start, 3),
                end=round(r.end, 3),
                text=text,
                tokens=r.text_ids,
                temperature=temperature,
                avg_logprob=sum(lp.logprob for lp in r.logprobs) / len(r.logprobs) if r.logprobs else 0.0,
                compression_ratio=len(raw) / len(zlib.compress(raw)),
                no_speech_prob=round(1.0 - r.speech_prob, 4),
            )
        )
    return wire.TranscriptionVerboseResponse(
        task=task,
        language=language,
        duration=round(duration, 3),
        text=join_texts([r.text for r in results]),
        segments=segments,
        usage=wire.DurationUsage(seconds=round(duration, 3)),
    )


def _timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def subtitles(fmt: str, results: list[SegmentText]) -> str:
    """One cue per segment, at the times the VAD found."""
    sep = "." if fmt == "vtt" else ","
    cues = [(r.start, r.end, r.text.strip()) for r in results if r.text.strip()]
    body = [
        (f"{i}\n" if fmt == "srt" else "") + f"{_timestamp(a, sep)} --> {_timestamp(b, sep)}\n{text}\n\n"
        for i, (a, b, text) in enumerate(cues, start=1)
    ]
    return ("WEBVTT\n\n" if fmt == "vtt" else "") + "".join(body)


def wire_logprobs(tokenizer: GLM4Tokenizer, results: list[SegmentText]) -> list[wire.TranscriptLogprob]:
    out = []
    for r in results:
        for lp in r.logprobs:
            raw = tokenizer.decode_bytes([lp.token_id])
            out.append(
                wire.TranscriptLogprob(
                    token=raw.decode("utf-8", errors="replace"), logprob=max(lp.logprob, -9999.0), bytes=list(raw)
                )
            )
    return out


# Unicode script (the first word of a letter's name) -> Whisper's language name. GLM-4-Voice speaks Chinese and
# English, so Latin letters are English; the other scripts name their usual language.
_SCRIPTS = {
    "CJK": "chinese",
    "HIRAGANA": "japanese",
    "KATAKANA": "japanese",
    "HANGUL": "korean",
    "CYRILLIC": "russian",
    "ARABIC": "arabic",
    "THAI": "thai",
    "DEVANAGARI": "hindi",
    "HEBREW": "hebrew",
    "GREEK": "greek",
    "LATIN": "english",
}


def detect_language(text: str) -> str:
    """The transcript's language from the script most of its letters are written in ("unknown" without letters).
    Kana anywhere means Japanese (Japanese text mixes kana with CJK characters)."""
    counts: Counter[str] = Counter()
    for ch in text:
        if ch.isalpha():
            script = unicodedata.name(ch, "").split(" ")[0]
            if script in _SCRIPTS:
                counts[_SCRIPTS[script]] += 1
    if counts["japanese"]:
        return "japanese"
    return counts.most_common(1)[0][0] if counts else "unknown"
