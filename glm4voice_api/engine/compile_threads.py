"""Kernel compiles in parallel while the server starts, one at a time once it serves.

vLLM sets inductor's compile workers to 1 in every process that imports it (`TORCHINDUCTOR_COMPILE_THREADS=1`,
vllm/env_override.py; vllm#10619: a serving process should not keep a pool of compile processes). At start that
makes a cold compile build its kernels one after another, on one core of a machine that has many: vLLM's graph
(~10 s of its 22 s cold torch.compile on an H100) and the decoder's blocks (~15 s of the decoder's 24 s cold start),
one after the other, on the way to ready. So the start compiles with `threads` worker processes
(`engine.compile_threads`), and afterwards the process goes back to vLLM's 1 with the pool shut down: a compile
after the start (a shape no warm-up covered) runs in-process, as vLLM intends.

vLLM's engine core is forked from the API process, so the count set before the fork is the one its compile uses;
the decoder's host in that process (`in_engine`) ends it after its own compile. A decoder in this process wraps its
compile in `parallel_compiles`. With nothing set (or 1) nothing changes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_open = [0]  # decoders compiling now in this process (several GPUs' decoders start on threads at once)


def set_compile_threads(threads: int) -> None:
    """Inductor's compile workers for compiles from now on; 1 also shuts down the pool a parallel compile started."""
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = max(1, threads)
    if threads <= 1:
        from torch._inductor.async_compile import shutdown_compile_workers

        shutdown_compile_workers()


@contextlib.contextmanager
def parallel_compiles(threads: int) -> Iterator[None]:
    """Compile with `threads` workers inside; back to one (pool shut down) when the last open block ends."""
    if threads <= 1:
        yield
        return
    with _lock:
        _open[0] += 1
        set_compile_threads(threads)
    try:
        yield
    finally:
        with _lock:
            _open[0] -= 1
            if not _open[0]:
                set_compile_threads(1)
