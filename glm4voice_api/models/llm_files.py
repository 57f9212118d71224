"""The LLM folder's own files, checked before vLLM reads them: a broken file is named with its problem, as the speech
models' loaders do, rather than surfacing as a bare JSONDecodeError or a trace from inside the engine's start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from glm4voice_api.models.errors import CheckpointFormatError


def read_llm_config(folder: Path) -> dict[str, Any]:
    """`config.json` of the LLM folder as a JSON object; CheckpointFormatError naming the file and the problem."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: file not found (expected config.json in the LLM folder)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def check_llm_weights(folder: Path) -> None:
    """Every `*.safetensors` file of the folder has a whole header and all the bytes it declares (a truncated copy
    fails here, by name, instead of inside vLLM's loader); the folder has at least one."""
    from safetensors import SafetensorError, safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointFormatError(f"{folder}: no *.safetensors weight files in the LLM folder")
    for path in files:
        try:
            # Reads only the header; safetensors checks that the file holds exactly the bytes the header declares.
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as exc:
            msg = f"{path}: not a complete safetensors file (truncated or damaged: {exc})"
            raise CheckpointFormatError(msg) from exc
