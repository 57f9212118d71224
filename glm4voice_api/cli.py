"""`glm4voice-api` command line. Flags are generated from the `Settings` fields (one name, default and help each).

Nested groups (engine, limits) contribute their fields under their own names: `--max-model-len`, not
`--engine.max-model-len`, because the vLLM flags are what operators already know. Values given on the command line
override the environment (GLM4VOICE_*), which overrides the defaults.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from glm4voice_api.config import Settings


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _add_flag(parser: argparse._ArgumentGroup, dest: str, field: FieldInfo) -> None:
    annotation = _unwrap_optional(field.annotation)
    flag = "--" + dest.split(".")[-1].replace("_", "-")
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": field.description}
    origin = typing.get_origin(annotation)
    if annotation is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        parser.add_argument(flag, **kwargs)
        return
    kwargs["metavar"] = dest.split(".")[-1].upper()
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
    """Add one flag per leaf field of `Settings`."""
    top = parser.add_argument_group("server")
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            group = parser.add_argument_group(name)
            for sub_name, sub_field in annotation.model_fields.items():
                _add_flag(group, f"{name}.{sub_name}", sub_field)
        else:
            _add_flag(top, name, field)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    base = Settings()
    overrides: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if dest in ("command", "func"):
            continue
        if "." in dest:
            group, key = dest.split(".", 1)
            nested.setdefault(group, {})[key] = value
        else:
            overrides[dest] = value
    for group, values in nested.items():
        overrides[group] = getattr(base, group).model_copy(update=values)
    merged = base.model_dump() | {k: (v.model_dump() if isinstance(v, BaseModel) else v) for k, v in overrides.items()}
    return Settings(**merged)


def _serve(args: argparse.Namespace) -> None:
    from glm4voice_api.server import serve  # noqa: PLC0415 - keeps `--help` fast (no torch/vllm import)

    serve(settings_from_args(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glm4voice-api", description="OpenAI-compatible GLM-4-Voice server.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="Start the API server.")
    add_settings_flags(serve)
    serve.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)
