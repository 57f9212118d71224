"""Stored state: audio ids and voices (SQLite by default)."""

from __future__ import annotations

from pathlib import Path

from glm4voice_api.store.base import Store, StoredAudio, StoredVoice
from glm4voice_api.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "Store", "StoredAudio", "StoredVoice", "open_store"]


def open_store(url: str | None, default_dir: Path) -> Store:
    """`sqlite:///path` (default: <cache_dir>/store.sqlite3)."""
    if url is None:
        return SqliteStore(default_dir / "store.sqlite3")
    if url.startswith("sqlite:///"):
        return SqliteStore.from_url(url)
    raise ValueError(f"unsupported store URL {url!r} (expected sqlite:///path)")
