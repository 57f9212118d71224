"""A corpus of malformed audio and request bodies, built from the real encoders and byte surgery.

Every blob in `AUDIO` is run through every route that takes audio (chat `input_audio` as wav and mp3, the
transcription upload, the voice sample upload); `BASE64` only through chat; `BODIES` are whole requests. Each case
names what the server must answer (a 4xx and, where the cause is ours to name, the envelope's `code`); a few are
deliberately accepted (documented tolerance) and say so.
"""

from __future__ import annotations

import base64
import functools
import json
import struct
from dataclasses import dataclass, field

import numpy as np

from glm4voice_api.audio.encode import encode_whole

MODEL = "glm-4-voice-9b"
MAX_AUDIO_BYTES = 25 * 1024 * 1024  # the server's default --max-audio-bytes
MAX_REQUEST_BYTES = 32 * 1024 * 1024  # the server's default --max-request-bytes


@dataclass(frozen=True)
class Blob:
    """Audio bytes as a client would upload them: `status`/`code` are what every audio route must answer."""

    id: str
    data: bytes
    filename: str
    format: str  # chat's input_audio.format
    status: int = 400
    code: str | None = "invalid_audio"


@dataclass(frozen=True)
class Body:
    """A whole request (httpx keyword arguments) and the error it must get."""

    id: str
    method: str
    path: str
    request: dict = field(default_factory=dict)
    status: int | tuple[int, ...] = 400
    code: str | None = None
    envelope: bool = True
    """False only where uvicorn rejects the HTTP framing itself, before any application code runs."""


def tone(seconds: float = 1.0, rate: int = 22050) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@functools.cache
def valid(fmt: str) -> bytes:
    """One second of a tone in `fmt` (wav/mp3/flac/opus/aac) from the server's own encoders."""
    return encode_whole(fmt, tone())


def _wav_fmt(wav: bytes, **fields: int) -> bytes:
    """A canonical 44-byte-header WAV with fmt-chunk fields overwritten (byte surgery on a real file)."""
    offsets = {
        "format_tag": (20, "<H"),
        "channels": (22, "<H"),
        "rate": (24, "<I"),
        "byte_rate": (28, "<I"),
        "block_align": (32, "<H"),
        "bits": (34, "<H"),
        "riff_size": (4, "<I"),
        "data_size": (40, "<I"),
    }
    out = bytearray(wav)
    assert out[36:40] == b"data", "encode_whole's WAV must have the canonical 44-byte header"
    for name, value in fields.items():
        offset, fmt = offsets[name]
        struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _mp3_lying_header(mp3: bytes) -> bytes:
    """Overwrite the first MPEG frame header's sample-rate index with the reserved value 3 and the bitrate
    index with the forbidden 15: a header that lies about everything the decoder sizes buffers from."""
    out = bytearray(mp3)
    start = next(i for i in range(len(out) - 1) if out[i] == 0xFF and (out[i + 1] & 0xE0) == 0xE0)
    out[start + 2] = (out[start + 2] & 0x03) | 0xF0 | 0x0C  # bitrate 1111, sample rate 11
    return bytes(out)


def _mp4_huge_box() -> bytes:
    # An ftyp box, then a moov box declaring 4 GiB (the file is 96 bytes).
    return b"\x00\x00\x00\x18ftypM4A \x00\x00\x00\x00M4A mp42" + b"\xff\xff\xff\xffmoov" + b"\x00" * 64


def _id3_huge() -> bytes:
    # An ID3v2 tag that declares ~256 MiB (syncsafe 0x7F x4) in front of 10 bytes of nothing.
    return b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + b"\x00" * 10


def audio_blobs() -> list[Blob]:
    wav, mp3 = valid("wav"), valid("mp3")
    rng = np.random.default_rng(20261124)
    noise = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return [
        Blob("zero-length", b"", "empty.wav", "wav", code="empty_audio"),
        Blob("one-byte", b"R", "one.wav", "wav"),
        Blob("wav-header-only", wav[:44], "header.wav", "wav", code="empty_audio"),
        Blob("wav-truncated-in-header", wav[:30], "cut.wav", "wav"),
        Blob("mp3-truncated-to-1-frame-header", mp3[:4], "cut.mp3", "mp3"),
        Blob("wav-riff-size-huge", _wav_fmt(wav, riff_size=0xFFFFFFF0), "riff.wav", "wav", status=200, code=None),
        # The data chunk claims 4 GiB; FFmpeg reads what is there (documented tolerance: streaming WAVs do this).
        Blob(
            "wav-data-size-beyond-file", _wav_fmt(wav, data_size=0xFFFFFFF0), "data.wav", "wav", status=200, code=None
        ),
        Blob("wav-rate-0", _wav_fmt(wav, rate=0, byte_rate=0), "rate0.wav", "wav"),
        Blob("wav-rate-4ghz", _wav_fmt(wav, rate=4_000_000_000, byte_rate=8_000_000_000 % 2**32), "rate4g.wav", "wav"),
        Blob("wav-channels-0", _wav_fmt(wav, channels=0), "ch0.wav", "wav"),
        Blob("wav-channels-65535", _wav_fmt(wav, channels=65535, block_align=65535 * 2 % 2**16), "ch65535.wav", "wav"),
        # FFmpeg would read "7 bits" as u8 (noise at half speed); decode.py rejects the self-contradicting header.
        Blob("wav-bits-7", _wav_fmt(wav, bits=7), "bits7.wav", "wav"),
        Blob("wav-byte-rate-lie", _wav_fmt(wav, byte_rate=1), "byterate.wav", "wav"),
        # Block align is implied by the codec; FFmpeg recomputes it and the audio is intact (documented tolerance).
        Blob("wav-block-align-0", _wav_fmt(wav, block_align=0), "align0.wav", "wav", status=200, code=None),
        Blob("wav-format-tag-unknown", _wav_fmt(wav, format_tag=0x1234), "tag.wav", "wav", code="unsupported_format"),
        Blob("mp4-box-size-huge", _mp4_huge_box(), "huge.m4a", "wav"),
        Blob("ogg-magic-then-garbage", b"OggS" + b"\xff" * 60, "x.ogg", "wav"),
        Blob("flac-magic-then-garbage", b"fLaC" + b"\xff" * 60, "x.flac", "mp3"),
        Blob("mp3-lying-frame-header", _mp3_lying_header(mp3), "lie.mp3", "mp3", status=200, code=None),
        Blob("id3-huge-declared-size", _id3_huge(), "id3.mp3", "mp3"),
        Blob("random-bytes-as-wav", noise, "noise.wav", "wav"),
        Blob("random-bytes-as-mp3", noise, "noise.mp3", "mp3"),
        Blob("text-as-wav", b"hello, this is not audio at all\n" * 8, "text.wav", "wav"),
        Blob("png-as-wav", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image.wav", "wav"),
        Blob("m3u-playlist", b"#EXTM3U\n#EXTINF:1,x\nfile:///etc/passwd\n", "list.mp3", "mp3"),
        # Content is probed, the label is a hint: a valid MP3 labelled wav plays (as in a browser).
        Blob("valid-mp3-labelled-wav", mp3, "really-mp3.wav", "wav", status=200, code=None),
    ]


def base64_cases() -> list[tuple[str, str, str]]:
    """(id, input_audio.data, expected code) for chat's base64 audio."""
    good = base64.b64encode(valid("wav")).decode()
    return [
        ("empty-string", "", "empty_audio"),
        ("whitespace-only", "   \n\t", "empty_audio"),
        ("non-alphabet", "UklGR!!$$%%^^" + good[16:64], "invalid_base64"),
        ("urlsafe-alphabet", base64.urlsafe_b64encode(b"\xfb\xff" * 40).decode(), "invalid_base64"),
        ("missing-padding", good[:-2].rstrip("=")[:-1], "invalid_base64"),
        ("extra-padding", good + "====", "invalid_base64"),
        ("embedded-newlines", good[:40] + "\n" + good[40:], "invalid_base64"),
        ("data-url", "data:audio/wav;base64," + good, "invalid_base64"),
        ("data-url-garbage", "data:\x00\xff;;;base64,@@@", "invalid_base64"),
        ("unicode", "🎵" * 16, "invalid_base64"),
        ("valid-base64-of-nothing-audio", base64.b64encode(b"\x00" * 300).decode(), "invalid_audio"),
    ]


def _chat(content: object, **extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2, **extra}


def _nested(depth: int) -> bytes:
    return b'{"model":"m","messages":' + b"[" * depth + b"]" * depth + b"}"


def body_cases() -> list[Body]:
    chat, speech = "/v1/chat/completions", "/v1/audio/speech"
    audio_part = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(valid("wav")).decode(), "format": "wav"},
    }
    json_headers = {"content-type": "application/json"}
    cases: list[Body] = []
    for path in (chat, speech):
        name = path.rsplit("/", 1)[1]
        cases += [
            Body(f"{name}-empty-body", "POST", path, {"content": b"", "headers": json_headers}),
            Body(
                f"{name}-truncated-json",
                "POST",
                path,
                {"content": b'{"model": "glm', "headers": json_headers},
                code="invalid_json",
            ),
            Body(f"{name}-json-array", "POST", path, {"json": [1, 2, 3]}),
            Body(f"{name}-json-string", "POST", path, {"json": "hello"}),
            Body(f"{name}-json-null", "POST", path, {"content": b"null", "headers": json_headers}),
            Body(f"{name}-invalid-utf8", "POST", path, {"content": b'{"model": "\xff\xfe"}', "headers": json_headers}),
            Body(f"{name}-nan", "POST", path, {"content": b'{"model": NaN}', "headers": json_headers}),
            Body(f"{name}-deeply-nested", "POST", path, {"content": _nested(50_000), "headers": json_headers}),
            Body(
                f"{name}-wrong-content-type",
                "POST",
                path,
                {"content": b"model=x", "headers": {"content-type": "application/x-www-form-urlencoded"}},
            ),
            Body(
                f"{name}-text-plain",
                "POST",
                path,
                {"content": b'{"model": "x"}', "headers": {"content-type": "text/plain"}},
            ),
            Body(f"{name}-multipart", "POST", path, {"files": {"model": (None, MODEL)}}),
            Body(
                f"{name}-content-length-huge",
                "POST",
                path,
                {"content": b"{}", "headers": {**json_headers, "content-length": str(MAX_REQUEST_BYTES + 1)}},
                status=413,
                code="request_too_large",
            ),
            Body(
                f"{name}-content-length-short",
                "POST",
                path,
                {"content": json.dumps(_chat("hi")).encode(), "headers": {**json_headers, "content-length": "10"}},
                code="invalid_json",
            ),
            Body(
                f"{name}-content-length-not-a-number",
                "POST",
                path,
                {"content": b"{}", "headers": {**json_headers, "content-length": "12abc"}},
                envelope=False,
            ),
            Body(
                f"{name}-body-over-cap",
                "POST",
                path,
                {"content": b" " * (MAX_REQUEST_BYTES + 16), "headers": json_headers},
                status=413,
                code="request_too_large",
            ),
        ]
    cases += [
        Body("chat-no-messages", "POST", chat, {"json": {"model": MODEL, "messages": []}}),
        Body(
            "chat-role-unknown", "POST", chat, {"json": {"model": MODEL, "messages": [{"role": "x", "content": "y"}]}}
        ),
        Body("chat-content-number", "POST", chat, {"json": _chat(5)}),
        Body("chat-empty-text", "POST", chat, {"json": _chat("")}, status=(200, 400)),
        # Lone surrogates and NULs are valid JSON escapes (httpx cannot send them as UTF-8, json.dumps escapes them).
        Body(
            "chat-unicode-garbage",
            "POST",
            chat,
            {"content": json.dumps(_chat("\udcff\u202e\x00\ufffe\U0010ffff" * 10)).encode(), "headers": json_headers},
            status=(200, 400),
        ),
        Body(
            "speech-unicode-garbage",
            "POST",
            speech,
            {
                "content": json.dumps({"model": MODEL, "input": "\udcff\x00\ufffe", "voice": "\ud800"}).encode(),
                "headers": json_headers,
            },
            status=(200, 400),
        ),
        Body("chat-huge-text", "POST", chat, {"json": _chat("x" * 1_000_000)}),
        Body("chat-huge-array", "POST", chat, {"json": _chat([{"type": "text", "text": "a"}] * 200_000)}),
        Body("chat-max-tokens-0", "POST", chat, {"json": _chat("hi", max_tokens=0)}),
        Body("chat-max-tokens-huge", "POST", chat, {"json": _chat("hi", max_tokens=2**63)}),
        Body("chat-temperature-string", "POST", chat, {"json": _chat("hi", temperature="hot")}),
        Body("chat-n-2", "POST", chat, {"json": _chat("hi", n=2)}, status=(200,)),
        Body("chat-n-9", "POST", chat, {"json": _chat("hi", n=9)}),
        Body(
            "chat-audio-part-no-format",
            "POST",
            chat,
            {"json": _chat([{"type": "input_audio", "input_audio": {"data": audio_part["input_audio"]["data"]}}])},
        ),
        Body(
            "chat-audio-format-unknown",
            "POST",
            chat,
            {
                "json": _chat(
                    [
                        {
                            "type": "input_audio",
                            "input_audio": {"data": audio_part["input_audio"]["data"], "format": "midi"},
                        }
                    ]
                )
            },
            code="unsupported_format",
        ),
        Body(
            "chat-audio-data-not-string",
            "POST",
            chat,
            {"json": _chat([{"type": "input_audio", "input_audio": {"data": [1, 2], "format": "wav"}}])},
        ),
        Body("chat-audio-output-no-voice", "POST", chat, {"json": _chat("hi", modalities=["text", "audio"])}),
        Body(
            "chat-audio-output-bad-format",
            "POST",
            chat,
            {"json": _chat("hi", modalities=["text", "audio"], audio={"voice": "alloy", "format": "midi"})},
        ),
        Body(
            "chat-audio-unknown-id",
            "POST",
            chat,
            {
                "json": {
                    "model": MODEL,
                    "max_tokens": 2,
                    "messages": [
                        {"role": "assistant", "audio": {"id": "audio_does_not_exist"}},
                        {"role": "user", "content": "hi"},
                    ],
                }
            },
            status=(400, 404),
        ),
        Body(
            "chat-unknown-voice-id",
            "POST",
            chat,
            {"json": _chat("hi", modalities=["text", "audio"], audio={"voice": {"id": "voice_nope"}, "format": "wav"})},
            status=(400, 404),
        ),
        Body(
            "chat-duplicate-keys",
            "POST",
            chat,
            {
                "content": b'{"model":"x","model":"'
                + MODEL.encode()
                + b'","messages":[{"role":"user","content":"hi"}],"max_tokens":2,"max_tokens":-1}',
                "headers": json_headers,
            },
        ),
        Body("speech-empty-input", "POST", speech, {"json": {"model": MODEL, "input": "", "voice": "alloy"}}),
        Body(
            "speech-input-too-long", "POST", speech, {"json": {"model": MODEL, "input": "a" * 5000, "voice": "alloy"}}
        ),
        Body("speech-speed-0", "POST", speech, {"json": {"model": MODEL, "input": "hi", "voice": "alloy", "speed": 0}}),
        Body(
            "speech-format-unknown",
            "POST",
            speech,
            {"json": {"model": MODEL, "input": "hi", "voice": "alloy", "response_format": "midi"}},
        ),
        Body("speech-voice-number", "POST", speech, {"json": {"model": MODEL, "input": "hi", "voice": 7}}),
        Body(
            "speech-unknown-voice-id",
            "POST",
            speech,
            {"json": {"model": MODEL, "input": "hi", "voice": {"id": "voice_nope"}}},
            status=(400, 404),
        ),
    ]
    return cases + multipart_cases()


def multipart_cases() -> list[Body]:
    """Form-level faults of the two upload routes (the audio itself is covered by `audio_blobs`)."""
    wav = valid("wav")
    tr, vo = "/v1/audio/transcriptions", "/v1/audio/voices"
    cases: list[Body] = []
    voice = {"name": "fuzz", "consent": "cons_fuzz"}
    for path, file_field, other in ((tr, "file", {"model": MODEL}), (vo, "audio_sample", voice)):
        name = path.rsplit("/", 1)[1]
        cases += [
            Body(f"{name}-no-file", "POST", path, {"files": {k: (None, v) for k, v in other.items()}}),
            Body(
                f"{name}-file-as-text-field",
                "POST",
                path,
                {"files": {**{k: (None, v) for k, v in other.items()}, file_field: (None, "not a file")}},
            ),
            Body(f"{name}-json-body", "POST", path, {"json": {**other, file_field: "AAAA"}}),
            Body(f"{name}-urlencoded", "POST", path, {"data": {**other, file_field: "AAAA"}}),
            Body(
                f"{name}-empty-body",
                "POST",
                path,
                {"content": b"", "headers": {"content-type": "multipart/form-data; boundary=x"}},
            ),
            Body(
                f"{name}-no-boundary",
                "POST",
                path,
                {"content": b"--x\r\n\r\n--x--\r\n", "headers": {"content-type": "multipart/form-data"}},
            ),
            Body(
                f"{name}-truncated-multipart",
                "POST",
                path,
                {
                    "content": _multipart(other, file_field, wav)[:300],
                    "headers": {"content-type": "multipart/form-data; boundary=fuzzboundary"},
                },
            ),
            Body(
                f"{name}-garbage-multipart",
                "POST",
                path,
                {
                    "content": b"\x00\xff" * 500,
                    "headers": {"content-type": "multipart/form-data; boundary=fuzzboundary"},
                },
            ),
            Body(
                f"{name}-duplicate-file-fields",
                "POST",
                path,
                {
                    "content": _multipart(other, file_field, wav, duplicate=True),
                    "headers": {"content-type": "multipart/form-data; boundary=fuzzboundary"},
                },
                status=(200, 400),
            ),
            Body(
                f"{name}-file-over-cap",
                "POST",
                path,
                {
                    "files": {
                        **{k: (None, v) for k, v in other.items()},
                        file_field: ("big.wav", b"\x00" * (MAX_AUDIO_BYTES + 1)),
                    }
                },
                status=413,
            ),
            Body(
                f"{name}-content-length-short",
                "POST",
                path,
                {
                    "content": _multipart(other, file_field, wav),
                    "headers": {"content-type": "multipart/form-data; boundary=fuzzboundary", "content-length": "100"},
                },
                status=(400, 413),
            ),
        ]
    cases += [
        Body(
            "transcriptions-bad-response-format",
            "POST",
            tr,
            {"files": {"model": (None, MODEL), "response_format": (None, "midi"), "file": ("a.wav", wav)}},
        ),
        Body(
            "transcriptions-temperature-text",
            "POST",
            tr,
            {"files": {"model": (None, MODEL), "temperature": (None, "warm"), "file": ("a.wav", wav)}},
        ),
        Body(
            "transcriptions-unknown-model",
            "POST",
            tr,
            {"files": {"model": (None, "nope"), "file": ("a.wav", wav)}},
            status=404,
            code="model_not_found",
        ),
        *(
            Body(
                f"voices-{kind}-name",
                "POST",
                vo,
                {"files": {"name": (None, n), "consent": (None, "c"), "audio_sample": ("a.wav", wav)}},
            )
            for kind, n in (("empty", ""), ("huge", "n" * 10_000))
        ),
        Body("voices-delete-unknown", "DELETE", vo + "/voice_does_not_exist", status=404),
        Body("voices-delete-path-garbage", "DELETE", vo + "/%00%ff..", status=404),
    ]
    return cases


def _multipart(fields: dict[str, str], file_field: str, data: bytes, *, duplicate: bool = False) -> bytes:
    parts = [
        b'--fuzzboundary\r\nContent-Disposition: form-data; name="' + k.encode() + b'"\r\n\r\n' + v.encode() + b"\r\n"
        for k, v in fields.items()
    ]
    file_part = (
        b'--fuzzboundary\r\nContent-Disposition: form-data; name="'
        + file_field.encode()
        + b'"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        + data
        + b"\r\n"
    )
    parts += [file_part] * (2 if duplicate else 1)
    if duplicate:
        parts += parts[:1]  # the first text field twice as well
    return b"".join(parts) + b"--fuzzboundary--\r\n"


def dump(case: Body) -> str:
    """A short description of a case for assertion messages."""
    req = {k: (v if k != "content" else f"<{len(v)} bytes>") for k, v in case.request.items() if k != "files"}
    return f"{case.method} {case.path} {json.dumps(req, default=str)[:300]}"
