"""Measured admission across a restart, on real servers: the knee a server measured (written when a cut finds it)
is where the next start of the same configuration begins, instead of the initial guess it would first have to
overload to correct. Serving's own tests cover the controller (tests/unit/test_capacity.py); this shows the file,
the key and the start wired together in `create_app`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.api.conftest import start_server, stop_server

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("server")]


def test_a_restarted_server_starts_from_the_knee_it_measured(default_set: Path, tmp_path: Path) -> None:
    # Measured admission is on by default only on a GPU; asked for here. 32 sequences: the initial guess is 4 (an eighth).
    args = ("--model-dir", str(default_set), "--admission.measured", "--engine.max-num-seqs", "32")
    cache = tmp_path / "cache"  # the server's own cache folder, where the memory lives (the models are given)
    first = start_server(cache, tmp_path / "first.log", *args)
    try:
        assert first.metric("glm4voice_admission_limit") == 4
        found = re.search(r"capacity memory (\S+), key (\w+)\)", first.log())
        assert found, first.log()[-2000:]
        memory, key = Path(found.group(1)), found.group(2)
    finally:
        stop_server(first)
    assert memory == cache / "capacity.json" and not memory.exists()  # nothing measured yet: nothing written

    # What a cut at 5 running streams writes, beside an entry of another GPU or configuration.
    memory.write_text(json.dumps({key: {"knee": 5, "at": 0}, "another-gpu": {"knee": 90, "at": 0}}))
    second = start_server(cache, tmp_path / "second.log", *args)
    try:
        assert second.metric("glm4voice_admission_limit") == 3  # 70% of the knee, as after the cut
        assert "knee 5 remembered from an earlier run; limit 3" in second.log()
    finally:
        stop_server(second)
