"""Read the GLM-4-Voice decoder ``config.yaml`` (HyperPyYAML) strictly as data.

HyperPyYAML would import and instantiate every ``!new:`` class and run every ``!apply:`` call while
parsing: the released file reseeds four global RNGs (``__set_seed*``) and builds an unused 1 B-parameter
LM. Here nothing named in the file is imported or called: ``!new:`` becomes a ``YamlObject`` record,
``!apply:``/``!name:`` become inert ``YamlCall`` records, and ``!ref`` is resolved against the document.
Any other tag is rejected so a file we do not understand fails loudly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glm4voice_api.models.errors import CheckpointFormatError

__all__ = ["YamlCall", "YamlObject", "expect_class", "load_decoder_yaml", "parse_decoder_yaml"]


@dataclass(frozen=True)
class YamlObject:
    """A ``!new:dotted.Class`` node: the class name and its (resolved) constructor arguments."""

    cls: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    args: tuple[Any, ...] = ()

    def __getitem__(self, key: str) -> Any:
        try:
            return self.kwargs[key]
        except KeyError:
            msg = f"{self.cls}: missing required argument {key!r}"
            raise CheckpointFormatError(msg) from None

    def get(self, key: str, default: Any = None) -> Any:
        return self.kwargs.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.kwargs


@dataclass(frozen=True)
class YamlCall:
    """An ``!apply:`` or ``!name:`` node, kept only as a record: it is never executed."""

    kind: str  # "apply" | "name"
    target: str
    args: Any = None


@dataclass(frozen=True)
class _Ref:
    """Placeholder for ``!ref <key>`` until the whole document is known."""

    expr: str


# YAML 1.1 (PyYAML) only treats numbers with a dot as floats, so the released ``sigma_min: 1e-06`` would
# come back as a string. This is the usual YAML 1.2-style float pattern.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.VERBOSE,
)
_REF_RE = re.compile(r"^<([^<>]+)>$")
_REF_PART_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]+\])*)$")


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """Construct any node as plain data (deep), whatever its kind."""
    if isinstance(node, yaml.MappingNode):
        return _mapping(loader, node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    """Mapping constructor that rejects duplicate keys (a silent override hides format drift)."""
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            msg = f"duplicate key {key!r} in decoder config (line {key_node.start_mark.line + 1})"
            raise CheckpointFormatError(msg)
        out[key] = loader.construct_object(value_node, deep=True)
    return out


def _new(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> YamlObject:
    if isinstance(node, yaml.MappingNode):
        return YamlObject(cls=suffix, kwargs=_mapping(loader, node))
    if isinstance(node, yaml.SequenceNode):
        return YamlObject(cls=suffix, args=tuple(loader.construct_sequence(node, deep=True)))
    if loader.construct_scalar(node) not in ("", None):
        return YamlObject(cls=suffix, args=(loader.construct_scalar(node),))
    return YamlObject(cls=suffix)


def _call(kind: str):
    def construct(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> YamlCall:
        return YamlCall(kind=kind, target=suffix, args=_plain(loader, node))

    return construct


def _ref(loader: yaml.SafeLoader, node: yaml.Node) -> _Ref:
    if not isinstance(node, yaml.ScalarNode):
        msg = f"!ref must be a scalar '<key>' (line {node.start_mark.line + 1})"
        raise CheckpointFormatError(msg)
    return _Ref(str(loader.construct_scalar(node)).strip())


def _tuple(loader: yaml.SafeLoader, node: yaml.Node) -> tuple[Any, ...]:
    if not isinstance(node, yaml.SequenceNode):
        msg = f"!tuple must be a sequence (line {node.start_mark.line + 1})"
        raise CheckpointFormatError(msg)
    return tuple(loader.construct_sequence(node, deep=True))


def _unknown(_loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    msg = f"unsupported YAML tag {node.tag!r} in decoder config (line {node.start_mark.line + 1})"
    raise CheckpointFormatError(msg)


class _DecoderConfigLoader(yaml.SafeLoader):
    """SafeLoader that knows the HyperPyYAML tags as data and nothing else."""


_DecoderConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))
_DecoderConfigLoader.add_constructor("tag:yaml.org,2002:map", _mapping)
_DecoderConfigLoader.add_multi_constructor("!new:", _new)
_DecoderConfigLoader.add_multi_constructor("!apply:", _call("apply"))
_DecoderConfigLoader.add_multi_constructor("!name:", _call("name"))
_DecoderConfigLoader.add_constructor("!ref", _ref)
_DecoderConfigLoader.add_constructor("!tuple", _tuple)
_DecoderConfigLoader.add_constructor(None, _unknown)


def _lookup(root: dict[str, Any], expr: str, stack: tuple[str, ...]) -> Any:
    """Resolve ``<a>`` or ``<a[b][c]>`` against the top-level document."""
    m = _REF_RE.match(expr)
    parts = _REF_PART_RE.match(m.group(1).strip()) if m else None
    if parts is None:
        msg = f"unsupported !ref expression {expr!r}: only '<key>' or '<key[sub]>' are allowed"
        raise CheckpointFormatError(msg)
    if expr in stack:
        msg = f"circular !ref: {' -> '.join((*stack, expr))}"
        raise CheckpointFormatError(msg)
    keys = [parts.group(1), *re.findall(r"\[([^\[\]]+)\]", parts.group(2))]
    value: Any = root
    for key in keys:
        if isinstance(value, YamlObject):
            value = value.kwargs
        if not isinstance(value, dict) or key not in value:
            msg = f"!ref {expr!r}: key {key!r} not found"
            raise CheckpointFormatError(msg)
        value = value[key]
    return _resolve(root, value, (*stack, expr))


def _resolve(root: dict[str, Any], value: Any, stack: tuple[str, ...] = ()) -> Any:
    if isinstance(value, _Ref):
        return _lookup(root, value.expr, stack)
    if isinstance(value, dict):
        return {k: _resolve(root, v, stack) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(root, v, stack) for v in value]
    if isinstance(value, tuple):
        return tuple(_resolve(root, v, stack) for v in value)
    if isinstance(value, YamlObject):
        return YamlObject(value.cls, _resolve(root, value.kwargs, stack), _resolve(root, value.args, stack))
    if isinstance(value, YamlCall):
        return YamlCall(value.kind, value.target, _resolve(root, value.args, stack))
    return value


def parse_decoder_yaml(text: str) -> dict[str, Any]:
    """Parse HyperPyYAML text as data; see the module docstring."""
    try:
        doc = yaml.load(text, Loader=_DecoderConfigLoader)
    except yaml.YAMLError as exc:
        msg = f"decoder config is not valid YAML: {exc}"
        raise CheckpointFormatError(msg) from exc
    if not isinstance(doc, dict):
        msg = "decoder config must be a YAML mapping at the top level"
        raise CheckpointFormatError(msg)
    return _resolve(doc, doc)


def load_decoder_yaml(path: str | Path) -> dict[str, Any]:
    """Read a decoder ``config.yaml`` as data: ``!new:`` -> YamlObject, ``!ref`` resolved, calls inert."""
    return parse_decoder_yaml(Path(path).read_text(encoding="utf-8"))


def expect_class(obj: Any, cls: str, *, where: str = "") -> YamlObject:
    """Return ``obj`` if it is a ``!new:`` node of exactly ``cls``; otherwise raise CheckpointFormatError."""
    label = f" for {where}" if where else ""
    if not isinstance(obj, YamlObject):
        msg = f"expected !new:{cls}{label}, got {type(obj).__name__}: {obj!r}"
        raise CheckpointFormatError(msg)
    if obj.cls != cls:
        msg = f"unknown class {obj.cls!r}{label}: expected {cls!r}"
        raise CheckpointFormatError(msg)
    return obj
