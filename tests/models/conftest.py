"""Fixtures shared by the model tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests: the test machine is shared (2 cores), and oversubscribed intra-op
    threads on a loaded box run up to 40x slower than one thread. The README's tolerances were measured for 1 vs 2
    threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
