"""Checks a Realtime server event against the official OpenAPI description (`../shared/openai/openapi.json.gz`)
and the official SDK's own event models (`openai.types.realtime` / `openai.types.beta.realtime`)."""

from __future__ import annotations

import functools
import gzip
import json
from typing import Any

import pytest

from tests.conftest import REPO

SPEC = REPO.parent / "shared" / "openai" / "openapi.json.gz"


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` as JSON Schema (`null` allowed)."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items()}
    if node.pop("nullable", False):
        if isinstance(node.get("enum"), list) and None not in node["enum"]:
            node["enum"] = [*node["enum"], None]  # `nullable` admits null even where an enum lists the values
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        else:
            node = {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def _spec() -> dict:
    if not SPEC.exists():
        pytest.fail(f"{SPEC} is missing (the shared OpenAI API description)")
    with gzip.open(SPEC) as f:
        return _nullable(json.load(f))


@functools.cache
def _schema_names(union: str) -> dict[str, str]:
    """Event type -> schema name, from the union's members (`RealtimeServerEvent`, `RealtimeBeta...`)."""
    schemas = _spec()["components"]["schemas"]
    names: dict[str, str] = {}
    refs = [r["$ref"].rsplit("/", 1)[1] for r in schemas[union].get("anyOf", schemas[union].get("oneOf", []))]
    if union == "RealtimeServerEvent":
        refs += [n for n in schemas if n.startswith("RealtimeServerEvent") and n not in refs]
    for name in refs:
        enum = schemas[name].get("properties", {}).get("type", {}).get("enum") or []
        for event_type in enum:
            names.setdefault(event_type, name)
    return names


@functools.cache
def _validator(name: str):
    import jsonschema

    spec = _spec()
    schema = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    return jsonschema.Draft202012Validator(schema)


def check_event(event: dict, *, beta: bool = False) -> None:
    """Raise AssertionError (or a ValidationError) if `event` does not match its schema, found by its `type`.

    GA events: the OpenAPI description and the SDK's GA types. Beta events (a client that sent `OpenAI-Beta:
    realtime=v1`): the SDK's beta types, which keep the beta names (`response.audio.delta`, assistant content
    `audio`); the OpenAPI description's "beta" schemas have since taken the GA names and items."""
    if not beta:
        name = _schema_names("RealtimeServerEvent").get(event["type"])
        assert name is not None, f"no schema for server event type {event['type']!r}"
        errors = sorted(_validator(name).iter_errors(event), key=lambda e: list(e.path))
        assert not errors, f"{event['type']} does not match {name}: " + "; ".join(
            f"{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in errors[:5]
        )
    _check_sdk(event, beta)


def _check_sdk(event: dict, beta: bool) -> None:
    from pydantic import TypeAdapter

    if beta:
        from openai.types.beta.realtime import RealtimeServerEvent

        if isinstance(event.get("session"), dict) and "model" in event["session"]:
            # The beta SDK types `model` as a literal of OpenAI's model names (the GA types take any string).
            event = {**event, "session": {**event["session"], "model": "gpt-realtime"}}
    else:
        from openai.types.realtime import RealtimeServerEvent
    TypeAdapter(RealtimeServerEvent).validate_python(event)


def check_object(schema_name: str, value: dict) -> None:
    """Raise AssertionError if `value` does not match `components.schemas[schema_name]`."""
    errors = sorted(_validator(schema_name).iter_errors(value), key=lambda e: list(e.path))
    assert not errors, f"does not match {schema_name}: " + "; ".join(
        f"{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in errors[:5]
    )
