"""SQLite store (the default): one file, WAL mode, calls run in a worker thread so the event loop never blocks."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from array import array
from pathlib import Path

from glm4voice_api.store.base import StoredAudio, StoredVoice

SCHEMA = """
CREATE TABLE IF NOT EXISTS audio (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, token_ids BLOB NOT NULL, transcript TEXT NOT NULL,
    created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS audio_expires ON audio (expires_at);
CREATE TABLE IF NOT EXISTS voices (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, prompt_tokens BLOB NOT NULL,
    prompt_mel BLOB NOT NULL, mel_frames INTEGER NOT NULL, created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS voices_tenant ON voices (tenant);
"""


def _pack(ids: list[int]) -> bytes:
    return array("i", ids).tobytes()


def _unpack(blob: bytes) -> list[int]:
    out = array("i")
    out.frombytes(blob)
    return out.tolist()


class SqliteStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        return cls(Path(url.removeprefix("sqlite:///")))

    async def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        def work() -> list[tuple]:
            with self._lock:
                return self._db.execute(sql, args).fetchall()

        return await asyncio.to_thread(work)

    async def put_audio(self, item: StoredAudio) -> None:
        await self._run("DELETE FROM audio WHERE expires_at < ?", (item.created_at,))
        await self._run(
            "INSERT INTO audio VALUES (?, ?, ?, ?, ?, ?)",
            (item.id, item.tenant, _pack(item.token_ids), item.transcript, item.created_at, item.expires_at),
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
        return StoredAudio(r[0], r[1], _unpack(r[2]), r[3], r[4], r[5])

    async def put_voice(self, voice: StoredVoice) -> None:
        await self._run(
            "INSERT INTO voices VALUES (?, ?, ?, ?, ?, ?, ?)",
            (voice.id, voice.tenant, voice.name, _pack(voice.prompt_tokens), voice.prompt_mel, voice.mel_frames,
             voice.created_at),
        )  # fmt: skip

    def _voice(self, r: tuple) -> StoredVoice:
        return StoredVoice(r[0], r[1], r[2], _unpack(r[3]), r[4], r[5], r[6])

    async def get_voice(self, tenant: str, voice_id: str) -> StoredVoice | None:
        rows = await self._run("SELECT * FROM voices WHERE id = ? AND tenant = ?", (voice_id, tenant))
        return self._voice(rows[0]) if rows else None

    async def list_voices(self, tenant: str) -> list[StoredVoice]:
        rows = await self._run("SELECT * FROM voices WHERE tenant = ? ORDER BY created_at", (tenant,))
        return [self._voice(r) for r in rows]

    async def delete_voice(self, tenant: str, voice_id: str) -> bool:
        before = await self._run("SELECT 1 FROM voices WHERE id = ? AND tenant = ?", (voice_id, tenant))
        await self._run("DELETE FROM voices WHERE id = ? AND tenant = ?", (voice_id, tenant))
        return bool(before)

    async def close(self) -> None:
        with self._lock:
            self._db.close()
