"""API key administration over any store: create (the secret is shown once, only its hash is kept), find, revoke."""

from __future__ import annotations

import re
import secrets
import time

from glm4voice_api.store.base import Store, StoredKey, hash_api_key

KEY_PREFIX = "sk-g4v-"
SHOWN_CHARS = len(KEY_PREFIX) + 6
"""Characters of a key kept in clear for listing: the fixed prefix plus 6 random ones (36 bits, not a secret)."""
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Tenant names: safe as store keys (no ':'), metric labels and log fields."""


def check_tenant(name: str) -> str:
    if not TENANT_RE.match(name):
        raise ValueError(f"bad tenant name {name!r}: 1-64 characters of A-Z a-z 0-9 . _ -, starting alphanumeric")
    return name


async def create_key(store: Store, tenant: str) -> tuple[StoredKey, str]:
    """A new key for `tenant`: (its stored record, the secret key itself, which is not kept anywhere)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    record = StoredKey(
        id=f"key_{secrets.token_hex(8)}",
        tenant=check_tenant(tenant),
        prefix=secret[:SHOWN_CHARS],
        key_hash=hash_api_key(secret),
        created_at=int(time.time()),
    )
    await store.put_key(record)
    return record, secret


async def match_keys(store: Store, id_or_prefix: str) -> list[StoredKey]:
    """The key with this id, or this whole secret, or the keys whose shown prefix starts with `id_or_prefix`
    (at least one character past the fixed `sk-g4v-`)."""
    keys = await store.list_keys()
    key_hash = hash_api_key(id_or_prefix)
    exact = [k for k in keys if id_or_prefix == k.id or key_hash == k.key_hash]
    if exact or len(id_or_prefix) <= len(KEY_PREFIX):
        return exact
    return [k for k in keys if k.prefix.startswith(id_or_prefix)]
