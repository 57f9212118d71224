"""The settings as a tree of dotted paths (`engine.max_model_len`): every leaf's field, and a copy with some replaced.

The CLI derives each flag and environment name from these paths; deployment manifests are checked against them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from glm4voice_api.config import LEGACY_NAMES, Settings


def setting_fields() -> dict[str, FieldInfo]:
    """Every leaf setting by its dotted path (`host`, `engine.max_model_len`): its flag and env name derive from it."""
    leaves: dict[str, FieldInfo] = {}
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            leaves |= {f"{name}.{sub}": sub_field for sub, sub_field in annotation.model_fields.items()}
        else:
            leaves[name] = field
    return leaves


def settings_with(base: Settings, values: Mapping[str, Any]) -> Settings:
    """``base`` with the given dotted paths (``engine.max_model_len``) replaced, validated as a whole."""
    tree = base.model_dump()
    for path, value in values.items():
        node = tree
        *groups, leaf = path.split(".")
        for group in groups:
            node = node[group]
        node[leaf] = value
    return Settings(**tree)


def unknown_env_names(environ: Mapping[str, str]) -> list[str]:
    """The `GLM4VOICE_*` variables of `environ` that name no setting, no group and no old name.

    Why: the settings ignore such names, so a typo (or a name another tool reads, like the bench's `--variant` rules)
    would leave the default in place without a word; the server names them in a warning at start."""
    paths = [*setting_fields(), *Settings.model_fields, *LEGACY_NAMES]
    known = {"GLM4VOICE_" + path.replace(".", "__").upper() for path in paths}
    return sorted(name for name in environ if name.upper().startswith("GLM4VOICE_") and name.upper() not in known)
