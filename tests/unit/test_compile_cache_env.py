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


def test_start_compiles_run_in_parallel_and_serving_goes_back_to_one(monkeypatch) -> None:
    """`engine/compile_threads.py`: inductor's workers for the start's compiles, then vLLM's 1 with the pool shut
    down once the last decoder that compiles in parallel is done (two GPUs' decoders start on threads at once)."""
    import torch._inductor.config as inductor_config
    from torch._inductor import async_compile

    from glm4voice_api.engine.compile_threads import parallel_compiles

    shutdowns = []
    monkeypatch.setattr(async_compile, "shutdown_compile_workers", lambda: shutdowns.append(1))
    monkeypatch.setattr(inductor_config, "compile_threads", 1)
    with parallel_compiles(8):
        assert inductor_config.compile_threads == 8
        with parallel_compiles(8):  # a second decoder
            pass
        assert inductor_config.compile_threads == 8 and not shutdowns  # the first one still compiles
    assert inductor_config.compile_threads == 1 and shutdowns == [1]
    with parallel_compiles(1):  # 1: nothing changes, nothing to shut down
        assert inductor_config.compile_threads == 1
    assert shutdowns == [1]
