"""Every compiler's cache under the server's cache_dir (`pipeline/runtime.py: compile_cache_env`), so one volume
makes a restart warm; an operator's own variable wins (build_runtime applies them with setdefault)."""

from __future__ import annotations

from pathlib import Path

from glm4voice_api.pipeline.runtime import compile_cache_env


def test_the_compile_caches_live_under_the_cache_dir(tmp_path: Path) -> None:
    env = compile_cache_env(tmp_path)
    assert env == {
        "VLLM_CACHE_ROOT": str(tmp_path / "vllm"),
        "TRITON_CACHE_DIR": str(tmp_path / "triton"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
    }
    environ = {"VLLM_CACHE_ROOT": "/somewhere/else"}  # an operator's own setting
    for name, value in env.items():  # as build_runtime applies them to os.environ
        environ.setdefault(name, value)
    assert environ["VLLM_CACHE_ROOT"] == "/somewhere/else" and environ["TRITON_CACHE_DIR"] == env["TRITON_CACHE_DIR"]
