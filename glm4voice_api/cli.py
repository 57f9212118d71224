"""`glm4voice-api` command line. Flags are generated from the `Settings` fields (one name, default and help each).

A flag is the field's path in the settings tree: `--host` at the root, `--engine.max-model-len` in a group (env
`GLM4VOICE_ENGINE__MAX_MODEL_LEN`), so fields of two groups never clash; `--help` lists them group by group. The flat
names used before the groups (`--max-model-len`, `--max-tokens`, ...) are still accepted, hidden from `--help`.
Values given on the command line override the environment (GLM4VOICE_*), which overrides the defaults.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from glm4voice_api.config import LEGACY_NAMES, Settings
from glm4voice_api.settings_tree import setting_fields, settings_with

if TYPE_CHECKING:
    from glm4voice_api.store import Store


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def flag_name(path: str) -> str:
    """`engine.max_model_len` -> `--engine.max-model-len`."""
    return "--" + path.replace("_", "-")


def _add_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, dest: str, field: FieldInfo, *, flag: str | None = None
) -> None:
    annotation = _unwrap_optional(field.annotation)
    hidden = flag is not None
    flag = flag or flag_name(dest)
    help_text = argparse.SUPPRESS if hidden else field.description
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
    origin = typing.get_origin(annotation)
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        parser.add_argument(flag, **kwargs)
        return
    kwargs["metavar"] = dest.rsplit(".", 1)[-1].upper()
    if origin is Literal:
        kwargs.pop("metavar")
        kwargs["choices"] = list(typing.get_args(annotation))
    elif origin is list:
        kwargs |= {"type": typing.get_args(annotation)[0], "nargs": "+"}
    elif annotation in (int, float, str, Path):
        kwargs["type"] = annotation
    else:
        kwargs["type"] = str
    parser.add_argument(flag, **kwargs)


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per leaf field of `Settings`, grouped as the tree is, plus the hidden pre-group names."""
    leaves = setting_fields()
    groups = {"": parser.add_argument_group("server", Settings.__doc__)}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            groups[name] = parser.add_argument_group(
                name.replace("_", "-"), (annotation.__doc__ or "").split("\n\n")[0]
            )
    for path, field in leaves.items():
        group, _, _ = path.rpartition(".")
        _add_flag(groups[group], path, field)
    for old, new in LEGACY_NAMES.items():
        legacy_flag = flag_name(old.rsplit(".", 1)[-1])
        if legacy_flag != flag_name(new):
            _add_flag(parser, new, leaves[new], flag=legacy_flag)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    given = {dest: value for dest, value in vars(args).items() if dest not in ("command", "func", "keys_command")}
    return settings_with(Settings(), given)


def _serve(args: argparse.Namespace) -> None:
    from glm4voice_api.server import serve  # here, not at the top: keeps `--help` fast (no torch/vllm import)

    serve(settings_from_args(args))


_STORE_FIELDS = ("store", "cache_dir", "auth.cache_seconds")
"""The settings the `keys` commands use: the same store as the server (same flags, same environment)."""


def _store_settings(args: argparse.Namespace) -> Settings:
    return settings_with(Settings(), {name: getattr(args, name) for name in _STORE_FIELDS if hasattr(args, name)})


async def _keys_create(store: Store, args: argparse.Namespace, settings: Settings) -> list[str]:
    from glm4voice_api.store.keys import create_key  # here, not at the top: keeps `--help` fast

    record, secret = await create_key(store, args.tenant)
    note = f"created {record.id} for tenant {record.tenant} ({record.prefix}...); the key is shown only now:"
    return [note, secret]  # the secret last, alone on its line: scripts take it with `tail -n 1`


async def _keys_list(store: Store, args: argparse.Namespace, settings: Settings) -> list[str]:
    rows = [
        (
            k.id,
            k.tenant,
            k.prefix + "...",
            _when(k.created_at),
            "active" if k.revoked_at is None else f"revoked {_when(k.revoked_at)}",
        )
        for k in await store.list_keys()
        if args.tenant in (None, k.tenant)
    ]
    return _table(("ID", "TENANT", "PREFIX", "CREATED", "STATUS"), rows)


async def _keys_revoke(store: Store, args: argparse.Namespace, settings: Settings) -> list[str]:
    from glm4voice_api.store.keys import match_keys  # here, not at the top: keeps `--help` fast

    matches = await match_keys(store, args.key)
    if len(matches) != 1:
        found = ", ".join(k.id for k in matches)
        raise ValueError(f"{len(matches)} keys match {args.key!r}" + (f" ({found}): give the id" if found else ""))
    key = matches[0]
    if not await store.revoke_key(key.id, int(time.time())):
        raise ValueError(f"{key.id} is already revoked")
    ttl = f"{settings.auth.cache_seconds:g}"
    return [f"revoked {key.id} (tenant {key.tenant}, {key.prefix}...); running servers refuse it within {ttl} s"]


def _keys(args: argparse.Namespace) -> None:
    import asyncio  # here, not at the top: keeps `--help` fast

    from glm4voice_api.store import StoreError, open_store

    command = {"create": _keys_create, "list": _keys_list, "revoke": _keys_revoke}[args.keys_command]
    settings = _store_settings(args)

    async def run() -> list[str]:
        store = open_store(settings.store, settings.cache_dir.resolve())
        try:
            await store.ping()
            return await command(store, args, settings)
        finally:
            await store.close()

    try:
        lines = asyncio.run(run())
    except (ValueError, StoreError) as exc:
        print(f"glm4voice-api keys {args.keys_command}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    print("\n".join(lines))


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]


def _add_keys_command(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="Create, list and revoke API keys (one tenant per key) in the store.")
    store_flags = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    group = store_flags.add_argument_group("store")
    leaves = setting_fields()
    for name in _STORE_FIELDS:
        _add_flag(group, name, leaves[name])
    _add_flag(store_flags, "auth.cache_seconds", leaves["auth.cache_seconds"], flag="--auth-cache-seconds")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", parents=[store_flags], help="New key for a tenant; prints it last.")
    create.add_argument("--tenant", required=True, help="Tenant name: 1-64 of A-Z a-z 0-9 . _ -")
    listing = actions.add_parser("list", parents=[store_flags], help="All keys (prefixes only, never secrets).")
    listing.add_argument("--tenant", default=None, help="Only this tenant's keys.")
    revoke = actions.add_parser("revoke", parents=[store_flags], help="Revoke a key by id, prefix or the key.")
    revoke.add_argument("key", metavar="ID_OR_PREFIX", help="key_... id, or the start of the key (sk-g4v-...).")
    keys.set_defaults(func=_keys)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glm4voice-api", description="OpenAI-compatible GLM-4-Voice server.", allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="Start the API server.", allow_abbrev=False)
    add_settings_flags(serve)
    serve.set_defaults(func=_serve)
    _add_keys_command(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)
