"""`glm4voice-api keys create|list|revoke` as a subprocess, against SQLite and a real redis-server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from glm4voice_api.store import hash_api_key, open_store


def _keys(store_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLM4VOICE_STORE": store_url}
    return subprocess.run(
        [sys.executable, "-m", "glm4voice_api", "keys", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _tenant_of(store_url: str, key: str, tmp_path: Path) -> str | None:
    async def lookup() -> str | None:
        store = open_store(store_url, tmp_path)
        try:
            record = await store.find_key(hash_api_key(key))
            return record.tenant if record else None
        finally:
            await store.close()

    return asyncio.run(lookup())


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_create_list_revoke(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/keys.sqlite3"
    else:
        url = request.getfixturevalue("redis_url") + "/1"
        import redis

        redis.Redis.from_url(url).flushdb()
    created = _keys(url, "create", "--tenant", "acme")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("sk-g4v-") and len(key) > 40
    assert _tenant_of(url, key, tmp_path) == "acme"
    other = _keys(url, "create", "--tenant", "beta").stdout.strip().splitlines()[-1]

    listed = _keys(url, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "TENANT", "PREFIX", "CREATED", "STATUS"]
    assert len(lines) == 3
    assert key not in listed.stdout and other not in listed.stdout  # only prefixes are shown
    acme = next(line for line in lines if " acme " in line)
    assert key[:13] in acme and acme.endswith("active")
    beta_only = _keys(url, "list", "--tenant", "beta").stdout.splitlines()
    assert [line.split()[1] for line in beta_only] == ["TENANT", "beta"]

    revoked = _keys(url, "revoke", key[:13])
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked" in revoked.stdout
    assert _tenant_of(url, key, tmp_path) is None
    assert _tenant_of(url, other, tmp_path) == "beta"
    assert "revoked" in next(line for line in _keys(url, "list").stdout.splitlines() if " acme " in line)
    again = _keys(url, "revoke", acme.split()[0])
    assert again.returncode == 1 and "already revoked" in again.stderr


def test_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/keys.sqlite3"
    bad_tenant = _keys(url, "create", "--tenant", "no:colons")
    assert bad_tenant.returncode == 1 and "bad tenant name" in bad_tenant.stderr
    unknown = _keys(url, "revoke", "key_nope")
    assert unknown.returncode == 1 and "0 keys match" in unknown.stderr
    bad_url = _keys("mysql://x", "list")
    assert bad_url.returncode == 1 and "unsupported store URL" in bad_url.stderr
    assert "Traceback" not in bad_tenant.stderr + unknown.stderr + bad_url.stderr


def test_flag_overrides_the_environment(tmp_path: Path) -> None:
    flag_url = f"sqlite:///{tmp_path}/flag.sqlite3"
    created = _keys(f"sqlite:///{tmp_path}/env.sqlite3", "create", "--tenant", "acme", "--store", flag_url)
    assert created.returncode == 0, created.stderr
    assert (tmp_path / "flag.sqlite3").is_file() and not (tmp_path / "env.sqlite3").exists()
