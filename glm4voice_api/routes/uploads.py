"""Reading multipart uploads with a byte cap (the body cap in app.py bounds the whole request, this one the file)."""

from __future__ import annotations

from typing import Any

from fastapi import Form, UploadFile

from glm4voice_api.errors import APIError


def multipart_form() -> Any:
    """`Form()` for a form model that holds files: a plain Form() is published as urlencoded in /openapi.json,
    so generated clients (and schema fuzzers) would send the upload in a body the route cannot read."""
    return Form(media_type="multipart/form-data")


async def read_upload(upload: UploadFile, max_bytes: int, param: str) -> bytes:
    """The file's bytes; 413 in the envelope when it is larger than `max_bytes` (read at most one byte past it)."""
    data = await upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        size = upload.size if upload.size is not None else len(data)
        raise APIError(
            f"The '{param}' file is {size} bytes; the limit is {max_bytes} bytes.",
            param=param,
            code="audio_too_large",
            status=413,
        )
    return data
