"""Logging of the server: JSON lines (default) or text, each line of a request carrying its id and tenant.

A small formatter rather than a dependency: one `json.dumps` per record is all it takes. The request id and tenant
come from the request context (`request_context.py`), set by the app's middleware for the request's whole life, so
lines logged by any module while serving a request carry them without passing them around.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Literal

from glm4voice_api.request_context import current_request

# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into the JSON object.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id", "tenant", "color_message"}


class RequestContextFilter(logging.Filter):
    """Adds `request_id` and `tenant` (None outside a request) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current_request()
        if not hasattr(record, "request_id"):
            record.request_id = context.request_id if context else None
        if not hasattr(record, "tenant"):
            record.tenant = context.tenant if context else None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "tenant"):
            if getattr(record, key, None) is not None:
                entry[key] = getattr(record, key)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [request_id={request_id} tenant={getattr(record, 'tenant', None)}]" if request_id else line


def configure_logging(level: str, fmt: Literal["json", "text"]) -> None:
    """One stderr handler on the root logger; uvicorn's loggers propagate to it (uvicorn is run without its own
    log config). vLLM configures its own `vllm` logger and keeps its text format."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def process_uptime_s() -> float | None:
    """Seconds since this process started (Linux: /proc), for the start's phase lines; None where unknown.

    Why from /proc rather than a timestamp taken at import: what a cold start spends before any module of ours runs
    (the interpreter, the console script's imports) is part of the time to ready that an operator waits for."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 (starttime) counts from field 3
        return round(float(Path("/proc/uptime").read_text().split()[0]) - start_s, 1)
    except (OSError, ValueError, IndexError):
        return None
