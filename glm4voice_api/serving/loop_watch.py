"""The event loop's health: how late it runs what is due (a histogram), and who held it when it stalled (a log line).

Everything a server does for its clients passes through one event loop: health checks, new requests, every stream's
next chunk. A callback that runs long without yielding (model work, a blocking store call, a tight generator)
delays all of them at once, and nothing else shows it: each request only sees its own latency. So a task wakes every
`interval_s` and records how late it woke (`glm4voice_event_loop_lag_seconds`), and a watchdog thread, which does
not need the loop to run, samples the loop thread's stack when a wake is more than `stall_s` overdue and logs it
once per stall (`glm4voice_event_loop_stalls_total`). The stack names the culprit; the lag histogram says how often.

The loop thread's CPU time (`glm4voice_event_loop_cpu_seconds_total`; its rate is the fraction of the time the loop
holds a core) says how much it competes for the GIL with the decoder's thread: every op the decoder launches
releases the GIL and must take it back, and behind a busy loop each take can wait up to Python's switch interval
(`--switch-interval-ms`). `bench/gil_probe.py` measures what that costs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

logger = logging.getLogger(__name__)


class LoopWatch:
    """Start with `start()` inside the running loop; `stop()` ends the task and the thread (idempotent)."""

    def __init__(
        self,
        *,
        stall_s: float,
        interval_s: float = 0.1,
        observe_lag: Callable[[float], None] = lambda _: None,
        count_stall: Callable[[], None] = lambda: None,
        add_cpu: Callable[[float], None] = lambda _: None,
    ) -> None:
        self.stall_s = stall_s
        self.interval_s = interval_s
        self.observe_lag = observe_lag
        self.count_stall = count_stall
        self.add_cpu = add_cpu
        self._due = time.monotonic()  # when the loop task should next wake (written by the loop, read by the thread)
        self._task: asyncio.Task | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop_thread_id = 0

    def start(self) -> None:
        self._loop_thread_id = threading.get_ident()
        self._due = time.monotonic() + self.interval_s
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="loop-watch")
        if self.stall_s > 0:
            self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1)

    async def _beat(self) -> None:
        cpu = time.thread_time()  # this runs on the loop's thread: its CPU time is the loop's
        while True:
            self._due = time.monotonic() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.observe_lag(max(0.0, time.monotonic() - self._due))
            now = time.thread_time()
            self.add_cpu(now - cpu)
            cpu = now

    def _watch(self) -> None:
        reported_due = None
        while not self._stop.wait(min(self.interval_s, self.stall_s / 2)):
            due = self._due
            late = time.monotonic() - due
            if late < self.stall_s or due == reported_due:
                continue
            reported_due = due  # one report per stall: the next beat moves `_due` on
            self.count_stall()
            frame = sys._current_frames().get(self._loop_thread_id)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"
            logger.warning(
                "event loop blocked for %.2f s so far (health checks, new requests and every stream wait); it is "
                "running:\n%s",
                late,
                stack,
                extra={"loop_blocked_s": round(late, 3)},
            )
