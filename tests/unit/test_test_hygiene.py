"""Tests that cannot pass by accident: conformance data found relative to the checkout, and missing data a failure;
the FastAPI pin that the admission lease relies on."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent


def _test_sources() -> dict[Path, str]:
    return {p: p.read_text() for p in TESTS.rglob("*.py") if p.resolve() != Path(__file__).resolve()}


def test_no_test_uses_an_absolute_path_to_shared_data() -> None:
    # An absolute path works on one machine layout only (a worktree, a CI checkout elsewhere would not find it).
    offenders = [str(p.relative_to(REPO)) for p, text in _test_sources().items() if re.search(r"[\"']/work/", text)]
    assert not offenders, offenders


def test_missing_conformance_data_fails_rather_than_skips() -> None:
    # A skip when the goldens are missing would let every conformance test "pass" on a machine without them.
    offenders = [
        str(p.relative_to(REPO))
        for p, text in _test_sources().items()
        if re.search(r"skipif\([^)]*(TINY|GOLDEN|CONFORMANCE|conformance)", text, re.DOTALL)
    ]
    assert not offenders, offenders


def test_fastapi_pin_keeps_yield_dependencies_open_while_a_response_streams() -> None:
    # FastAPI 0.106 to 0.117 ran the exit code of a `yield` dependency before a StreamingResponse's body was sent:
    # the admission lease (routes/admission.py) would be released as the stream starts. 0.118 restored the order.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    fastapi = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "fastapi")
    assert not any(fastapi.specifier.contains(Version(f"0.{minor}.0")) for minor in range(106, 118)), fastapi
