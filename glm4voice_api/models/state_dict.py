"""The one key-and-shape check every loader runs before it reads a tensor.

A folder that does not match the model must fail loudly and list what differs (missing, unexpected and
wrongly shaped keys), never load half the layers and leave the rest random.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from glm4voice_api.models.errors import CheckpointFormatError

__all__ = ["check_state_dict", "shapes_of"]

_MAX_LISTED = 8

Shapes = Mapping[str, tuple[int, ...]]


def shapes_of(tensors: Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a state dict (tensors on any device, `meta` included)."""
    return {key: tuple(t.shape) for key, t in tensors.items()}  # type: ignore[attr-defined]


def check_state_dict(found: Shapes, expected: Shapes, *, what: str, ignored: Collection[str] = ()) -> None:
    """Raise CheckpointFormatError naming every difference between the file's and the model's keys and shapes.

    ``what`` names both sides, e.g. "flow.pt does not match config.yaml"; ``ignored`` keys may be in the file
    without being expected (training-only state).
    """
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected and key not in ignored]
    wrong = [
        f"{key}: file {list(found[key])} vs expected {list(shape)}"
        for key, shape in expected.items()
        if key in found and tuple(found[key]) != tuple(shape)
    ]
    problems = [
        f"{label} ({len(items)}): {_listing(items)}"
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
        if items
    ]
    if problems:
        msg = f"{what}; " + "; ".join(problems)
        raise CheckpointFormatError(msg)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown if len(items) <= _MAX_LISTED else f"{shown}, ... and {len(items) - _MAX_LISTED} more"
