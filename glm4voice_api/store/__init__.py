"""Stored state: audio ids, voices, API keys, rate-limit windows (SQLite by default, Redis for several replicas)."""

from __future__ import annotations

from pathlib import Path

from glm4voice_api.store.base import (
    DEFAULT_TENANT,
    Store,
    StoredAudio,
    StoredClientSecret,
    StoredKey,
    StoredVoice,
    StoreError,
    StoreUnavailable,
    hash_api_key,
)
from glm4voice_api.store.redis_store import RedisStore
from glm4voice_api.store.sqlite import SqliteStore

__all__ = [
    "DEFAULT_TENANT",
    "RedisStore",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "StoredAudio",
    "StoredClientSecret",
    "StoredKey",
    "StoredVoice",
    "hash_api_key",
    "open_store",
]

_EXPECTED = "expected sqlite:///path or redis://host:port/db"


def open_store(url: str | None, default_dir: Path) -> Store:
    """The backend the URL's scheme names: `sqlite:///path` (default: <cache_dir>/store.sqlite3),
    `redis://host:port/db` (also `rediss://`, `unix://`)."""
    if url is None or not url.strip():
        return SqliteStore(default_dir / "store.sqlite3")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        if not url.startswith("sqlite:///"):
            raise ValueError(f"bad store URL {url!r} ({_EXPECTED})")
        return SqliteStore.from_url(url)
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url)
    raise ValueError(f"unsupported store URL {url!r} ({_EXPECTED})")
