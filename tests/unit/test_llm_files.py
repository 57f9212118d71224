"""A broken LLM folder stops the server at start with the file and its problem named (real files, the real CLI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _model_dir(default_set: Path, tmp_path: Path) -> Path:
    """A copy of the built-in default set whose LLM folder the test may damage."""
    models = tmp_path / "models"
    models.mkdir()
    for folder in default_set.iterdir():
        if folder.is_dir() and folder.name != "glm-4-voice-9b":
            (models / folder.name).symlink_to(folder)
    shutil.copytree(default_set / "glm-4-voice-9b", models / "glm-4-voice-9b")
    return models


def _serve(models: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "glm4voice_api", "serve", "--model-dir", str(models), "--port", "0"]
    cmd += ["--cache-dir", str(tmp_path / "cache"), "--log.format", "text"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("damage", ["garbage-config", "truncated-weights"])
def test_a_broken_llm_file_is_named_with_its_problem(default_set: Path, tmp_path: Path, damage: str) -> None:
    models = _model_dir(default_set, tmp_path)
    llm = models / "glm-4-voice-9b"
    if damage == "garbage-config":
        broken, problem = llm / "config.json", "not readable JSON"
        broken.write_text('{"architectures": ["ChatGLMModel"], "hidden_size": 64,,,')
    else:
        broken, problem = llm / "model.safetensors", "not a complete safetensors file"
        data = broken.read_bytes()
        broken.write_bytes(data[: len(data) // 2])
    result = _serve(models, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert f"{broken}: {problem}" in output, output[-3000:]
