"""Request validation errors worded as OpenAI words them.

Pydantic reports a location such as `('body', 'messages', 0, 'user', 'content', 'list[...]', 1, 'input_audio',
'input_audio', 'format')`: discriminator tags and union members are validator internals. OpenAI's `param` reads
`messages[0].content[1].input_audio.format`, and its message names the problem in plain words ("Missing required
parameter: 'messages[0].role'.", "Invalid type for 'temperature': expected a decimal, but got a string instead.").
"""

from __future__ import annotations

from typing import Any

from glm4voice_api.errors import APIError

# Discriminator values of the request unions (message roles, content part types): pydantic puts the chosen tag in
# the location right after the list index, where OpenAI's path has nothing.
_TAGS = frozenset(
    {"system", "developer", "user", "assistant", "tool", "function", "text", "input_audio", "image_url", "file"}
)
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "none", "dict", "list", "bytes"})
_KINDS = {
    "string": "a string",
    "int": "an integer",
    "float": "a decimal",
    "bool": "a boolean",
    "list": "an array",
    "dict": "an object",
    "model": "an object",
    "bytes": "a string",
}


def _is_internal(part: str, previous: object) -> bool:
    """A union member's name (`str`, `list[TextContentPart]`, `VoiceId`, `function-after[...]`) or a tag."""
    if isinstance(previous, int) and part in _TAGS:
        return True
    return part in _TYPE_NAMES or "[" in part or "(" in part or part[:1].isupper()


def openai_param(loc: tuple | list) -> str | None:
    """`messages[0].content[1].input_audio.format` from a pydantic location (leading `body`/`query` dropped)."""
    out = ""
    previous: object = None
    for part in loc:
        if part in ("body", "query", "path", "header") and previous is None and not out:
            previous = part
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _is_internal(str(part), previous):
            out += f".{part}" if out else str(part)
        previous = part
    return out or None


def _got(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a decimal"), (str, "a string")):
        if isinstance(value, kind):
            return name
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else "a value"


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 100 else text[:100] + "..."


def _number_word(value: Any) -> str:
    return "integer" if isinstance(value, int) and not isinstance(value, bool) else "decimal"


def describe(errors: list[dict]) -> APIError:
    """The most specific error of a pydantic error list as an OpenAI 400 (param path, plain message, OpenAI's code)."""
    if not errors:
        return APIError("The request body is not valid.", code="invalid_value")
    # A value that fits no member of a union gets one error per member; the one that got deepest names the
    # member the client meant (`content` as a list of parts: the bad part, not "expected a string").
    # Siblings (two missing fields) tie: the first, in the schema's order.
    e = max(errors, key=lambda err: len(err.get("loc", ())))
    kind, ctx, value = e.get("type", ""), e.get("ctx") or {}, e.get("input")
    param = openai_param(e.get("loc", ()))
    if kind == "json_invalid":
        return APIError("We could not parse the JSON body of your request.", code="invalid_json")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = str(ctx.get("discriminator", "type")).strip("'")
        param = f"{param}.{field}" if param else field
        if kind == "union_tag_not_found":
            return APIError(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
        expected = ctx.get("expected_tags", "")
        return APIError(
            f"Invalid value: '{_shown(ctx.get('tag'))}'. Supported values are: {expected}.",
            param=param,
            code="invalid_value",
        )
    name = param or "body"
    if kind == "missing":
        return APIError(f"Missing required parameter: '{name}'.", param=param, code="missing_required_parameter")
    if kind in ("literal_error", "enum"):
        return APIError(
            f"Invalid value: '{_shown(value)}'. Supported values are: {ctx.get('expected', '')}.",
            param=param,
            code="invalid_value",
        )
    for prefix, word in _KINDS.items():
        if kind.startswith(prefix + "_") and kind.endswith(("_type", "_parsing", "_from_float")):
            return APIError(
                f"Invalid type for '{name}': expected {word}, but got {_got(value)} instead.",
                param=param,
                code="invalid_type",
            )
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()), "")
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)  # "<= 1", as OpenAI writes it, not pydantic's "<= 1.0"
        side = "below_min" if kind.startswith("greater") else "above_max"
        return APIError(
            f"Invalid '{name}': {_number_word(value)} {side.replace('_', ' ')} value. Expected a value {op} {bound}, "
            f"but got {_shown(value)} instead.",
            param=param,
            code=f"{_number_word(value)}_{side}_value",
        )
    if kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        what = "string" if kind.startswith("string") or isinstance(value, str) else "array"
        unit = "characters" if what == "string" else "items"
        if kind.endswith("too_short"):
            n = ctx.get("min_length", 1)
            if what == "array" and n == 1:
                return APIError(
                    f"Invalid '{name}': empty array. Expected an array with minimum length 1, but got an empty array "
                    "instead.",
                    param=param,
                    code="empty_array",
                )
            return APIError(
                f"Invalid '{name}': {what} too short. Expected at least {n} {unit}.",
                param=param,
                code=f"{what}_below_min_length",
            )
        return APIError(
            f"Invalid '{name}': {what} too long. Expected at most {ctx.get('max_length')} {unit}.",
            param=param,
            code=f"{what}_above_max_length",
        )
    # Anything else: pydantic's own sentence, which is plain English, without its location syntax.
    return APIError(f"Invalid '{name}': {e.get('msg', 'invalid value')}.", param=param, code="invalid_value")
