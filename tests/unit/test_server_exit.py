"""The server's exit while starting (`server.stop_descendants`): no process it started may outlive it, not even
one forked while the others were being killed."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil

from glm4voice_api.server import stop_descendants


def _group(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    return out


def test_a_child_that_keeps_forking_leaves_no_orphan() -> None:
    # root -> a shell forking sleepers as fast as it can (as an engine core starting its workers when the SIGTERM
    # comes): a kill of what one read of the tree found leaves the sleepers forked after the read as orphans.
    root = subprocess.Popen(["bash", "-c", 'bash -c "while true; do sleep 30 & done" & wait'], start_new_session=True)
    try:
        time.sleep(0.5)
        parent = psutil.Process(root.pid)
        parent.suspend()  # the server itself does not fork while it exits
        killed = stop_descendants(parent)
        assert len(killed) >= 2  # the forking shell and sleepers
        parent.kill()
        root.wait(10)
        deadline = time.monotonic() + 5
        while _group(root.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _group(root.pid) == [], "a process forked during the kill outlived it"
    finally:
        try:
            os.killpg(root.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
