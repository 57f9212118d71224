"""CPU seconds of a process's threads by role (the server's, and vLLM's model process when it hosts the decoder)."""

from __future__ import annotations

import threading
import time

THREAD_ROLES = {
    "MainThread": "main",
    "vllm-engine": "engine",
    "decoder-scheduler": "decoder",
    "speech-tokenizer": "tokenizer",
    "decoder-host": "decoder_host",
}
"""Thread name -> role label; every other thread of the process counts as `other` (pools, the watchdogs)."""


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds of this process's live threads by role (`THREAD_ROLES`), read from each thread's own CPU clock.

    Why: the decoder's thread launches every op of a pass from Python and needs the GIL for each; the event loop
    (the main thread under `serve`), an in-process engine's thread and the tokenizer's take it too. Their CPU
    shares say how hard the GIL is contended: what a GPU profile cannot show. Linux (pthread CPU clocks); {} where
    the platform has none."""
    out: dict[str, float] = {}
    if not hasattr(time, "pthread_getcpuclockid"):
        return out
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            seconds = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
        role = THREAD_ROLES.get(thread.name, "other")
        out[role] = out.get(role, 0.0) + seconds
    return out
