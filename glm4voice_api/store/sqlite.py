"""SQLite store (the default): one file, WAL mode, calls run in the store's own thread so the event loop never
blocks.

The thread is the store's own, not asyncio's shared default executor: audio decoding and other blocking work
share that one, and a burst of it must not make key lookups, voice lists or rate windows wait behind it.
One process (one server replica) per file: several replicas need a shared store (`redis://`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from glm4voice_api.store.base import (
    StoredAudio,
    StoredClientSecret,
    StoredKey,
    StoredVoice,
    pack_ids,
    unavailable_on,
    unpack_ids,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS audio (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, token_ids BLOB NOT NULL, transcript TEXT NOT NULL,
    created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS audio_expires ON audio (expires_at);
CREATE TABLE IF NOT EXISTS voices (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, prompt_tokens BLOB NOT NULL,
    prompt_mel BLOB NOT NULL, mel_frames INTEGER NOT NULL, created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS voices_tenant ON voices (tenant);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, prefix TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL, revoked_at INTEGER);
CREATE TABLE IF NOT EXISTS rate_windows (
    tenant TEXT NOT NULL, window_start INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (tenant, window_start));
CREATE INDEX IF NOT EXISTS rate_windows_start ON rate_windows (window_start);
CREATE TABLE IF NOT EXISTS heartbeat (id INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS client_secrets (
    secret_hash TEXT PRIMARY KEY, tenant TEXT NOT NULL, session TEXT NOT NULL, created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS client_secrets_expires ON client_secrets (expires_at);
"""

_KEY_COLUMNS = "id, tenant, prefix, key_hash, created_at, revoked_at"


# Disk full, locked past the timeout, I/O errors, a file that cannot be opened: the store is unavailable. Integrity
# errors (a duplicate id) are bugs, not outages, and stay as they are.
@unavailable_on(sqlite3.OperationalError, OSError)
class SqliteStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The CLI and the server (or several CLI calls) may open the file at once: wait for locks, do not fail.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        # One thread: every call holds the connection's lock anyway.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sqlite")

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        path = url.removeprefix("sqlite:///")
        if not path:
            raise ValueError(f"store URL {url!r} names no file (expected sqlite:///path)")
        return cls(Path(path))

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return work(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, locked)

    async def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        return await self._call(lambda db: db.execute(sql, args).fetchall())

    async def put_audio(self, item: StoredAudio) -> None:
        await self._run("DELETE FROM audio WHERE expires_at < ?", (item.created_at,))
        await self._run(
            "INSERT INTO audio VALUES (?, ?, ?, ?, ?, ?)",
            (item.id, item.tenant, pack_ids(item.token_ids), item.transcript, item.created_at, item.expires_at),
        )

    async def get_audio(self, tenant: str, audio_id: str, now: int) -> StoredAudio | None:
        rows = await self._run(
            "SELECT id, tenant, token_ids, transcript, created_at, expires_at FROM audio "
            "WHERE id = ? AND tenant = ? AND expires_at >= ?",
            (audio_id, tenant, now),
        )
        if not rows:
            return None
        r = rows[0]
        return StoredAudio(r[0], r[1], unpack_ids(r[2]), r[3], r[4], r[5])

    async def put_voice(self, voice: StoredVoice) -> None:
        await self._run(
            "INSERT INTO voices VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                voice.id,
                voice.tenant,
                voice.name,
                pack_ids(voice.prompt_tokens),
                voice.prompt_mel,
                voice.mel_frames,
                voice.created_at,
            ),
        )

    def _voice(self, r: tuple) -> StoredVoice:
        return StoredVoice(r[0], r[1], r[2], unpack_ids(r[3]), r[4], r[5], r[6])

    async def get_voice(self, tenant: str, voice_id: str) -> StoredVoice | None:
        rows = await self._run("SELECT * FROM voices WHERE id = ? AND tenant = ?", (voice_id, tenant))
        return self._voice(rows[0]) if rows else None

    async def list_voices(self, tenant: str) -> list[StoredVoice]:
        rows = await self._run("SELECT * FROM voices WHERE tenant = ? ORDER BY created_at", (tenant,))
        return [self._voice(r) for r in rows]

    async def count_voices(self, tenant: str) -> int:
        return (await self._run("SELECT COUNT(*) FROM voices WHERE tenant = ?", (tenant,)))[0][0]

    async def delete_voice(self, tenant: str, voice_id: str) -> bool:
        sql = "DELETE FROM voices WHERE id = ? AND tenant = ?"
        return await self._call(lambda db: db.execute(sql, (voice_id, tenant)).rowcount > 0)

    async def put_key(self, key: StoredKey) -> None:
        await self._run(
            f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (key.id, key.tenant, key.prefix, key.key_hash, key.created_at, key.revoked_at),
        )

    async def find_key(self, key_hash: str) -> StoredKey | None:
        rows = await self._run(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (key_hash,)
        )
        return StoredKey(*rows[0]) if rows else None

    async def list_keys(self) -> list[StoredKey]:
        rows = await self._run(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")
        return [StoredKey(*r) for r in rows]

    async def revoke_key(self, key_id: str, now: int) -> bool:
        sql = "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        return await self._call(lambda db: db.execute(sql, (now, key_id)).rowcount > 0)

    async def has_keys(self) -> bool:
        return bool(await self._run("SELECT 1 FROM api_keys LIMIT 1"))

    async def put_client_secret(self, secret: StoredClientSecret) -> None:
        await self._run("DELETE FROM client_secrets WHERE expires_at < ?", (secret.created_at,))
        await self._run(
            "INSERT INTO client_secrets VALUES (?, ?, ?, ?, ?)",
            (secret.secret_hash, secret.tenant, secret.session, secret.created_at, secret.expires_at),
        )

    async def get_client_secret(self, secret_hash: str, now: int) -> StoredClientSecret | None:
        rows = await self._run(
            "SELECT secret_hash, tenant, session, created_at, expires_at FROM client_secrets "
            "WHERE secret_hash = ? AND expires_at >= ?",
            (secret_hash, now),
        )
        return StoredClientSecret(*rows[0]) if rows else None

    async def count_request(self, tenant: str, window_start: int, ttl_s: int) -> int:
        def work(db: sqlite3.Connection) -> int:
            # One UPSERT is atomic across processes sharing the file; pruning rides along on the same call.
            (count,) = db.execute(
                "INSERT INTO rate_windows VALUES (?, ?, 1) ON CONFLICT (tenant, window_start) "
                "DO UPDATE SET count = count + 1 RETURNING count",
                (tenant, window_start),
            ).fetchone()
            db.execute("DELETE FROM rate_windows WHERE window_start < ?", (window_start - ttl_s,))
            return count

        return await self._call(work)

    async def ping(self) -> None:
        await self._run("SELECT 1")

    async def check_writable(self) -> None:
        # A real write of one fixed-size row: in WAL mode every commit appends to the log, so a full disk fails it.
        await self._run("INSERT OR REPLACE INTO heartbeat VALUES (1, ?)", (time.time(),))

    async def close(self) -> None:
        with self._lock:
            self._db.close()
        self._executor.shutdown(wait=False)
