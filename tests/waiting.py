"""Waiting in tests: poll a condition until it holds, with a deadline; never a fixed sleep.

A fixed sleep is either too short on a loaded machine (the test fails for no reason) or too
long everywhere (the suite crawls), and it says nothing about what is awaited. Polling names
the condition, returns as soon as it holds and fails with that name when it never does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float, what: str, step: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy, and return that; fail the test
    naming ``what`` once ``timeout`` seconds have passed without it."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)  # the polling interval, not a wait for the condition
