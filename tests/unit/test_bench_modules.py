"""Every bench module imports (they run only on GPU machines, where a broken import costs device time)."""

import importlib
import pkgutil

import pytest

import bench

MODULES = sorted(m.name for m in pkgutil.iter_modules(bench.__path__))


@pytest.mark.parametrize("name", MODULES)
def test_bench_module_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")


def test_realtime_bench_percentiles_are_milliseconds() -> None:
    from bench.realtime_bench import percentiles

    assert percentiles([0.1, 0.2, 0.3])["p50"] == 200.0
    assert percentiles([])["p99"] is None
