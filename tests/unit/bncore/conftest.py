"""Fixtures the bncore tests share: the batch-norm backend and the thread count a test runs
with.

Not autouse: a module opts in with ``pytestmark = pytest.mark.usefixtures("eager_backend")``
(or ``"fast_cpu"``), because other modules run on another backend (compiled, the C++
operator) or on the default one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from bncore import functional as BF


@pytest.fixture
def eager_backend() -> Iterator[None]:
    """bncore's batch norm in eager PyTorch (neither torch.compile nor the C++ operator)."""
    before = BF.get_backend()
    BF.set_backend("eager")
    yield
    BF.set_backend(before)


@pytest.fixture
def fast_cpu(eager_backend: None) -> Iterator[None]:
    """Eager batch norm on one thread: threads only slow tiny models down, and torch.compile
    would spend seconds compiling."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
