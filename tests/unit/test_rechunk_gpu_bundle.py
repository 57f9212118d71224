"""scripts/rechunk_gpu_bundle.py: the GPU bundle refilled into chunks that fit a device call beside the tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "rechunk_gpu_bundle.py"


def test_chunks_stay_under_the_cap_and_the_tarball_comes_back_whole(tmp_path: Path) -> None:
    tarball = bytes(range(256)) * 2  # 512 bytes, cut by the build script into parts of 300
    files = {
        "c1/vllm.part_aa": tarball[:300],
        "c2/vllm.part_ab": tarball[300:],
        "c2/a.whl": b"a" * 90,
        "c3/b.whl": b"b" * 70,
        "c3/setup-on-gpu.sh": b"#!/bin/sh\n",
    }
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    cmd = [sys.executable, str(SCRIPT), "--root", str(tmp_path), "--cap", "260", "--part", "200"]
    subprocess.run(cmd, check=True, capture_output=True)
    chunks = sorted(tmp_path.glob("c*"))
    assert all(sum(f.stat().st_size for f in c.iterdir()) <= 260 for c in chunks)
    parts = sorted((f for c in chunks for f in c.glob("vllm.part_*")), key=lambda f: f.name)
    assert [f.name for f in parts] == ["vllm.part_aa", "vllm.part_ab", "vllm.part_ac"]
    assert b"".join(f.read_bytes() for f in parts) == tarball  # `cat vllm.part_*` on the GPU machine
    assert (chunks[-1] / "setup-on-gpu.sh").exists()  # the last call carries it with the work
    assert {f.name for c in chunks for f in c.glob("*.whl")} == {"a.whl", "b.whl"}


def test_a_file_larger_than_the_cap_leaves_the_bundle_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "big.whl").write_bytes(b"x" * 100)
    (tmp_path / "c1" / "setup-on-gpu.sh").write_bytes(b"")
    cmd = [sys.executable, str(SCRIPT), "--root", str(tmp_path), "--cap", "50"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert done.returncode != 0 and "big.whl" in done.stderr
    assert sorted(f.name for f in (tmp_path / "c1").iterdir()) == ["big.whl", "setup-on-gpu.sh"]
