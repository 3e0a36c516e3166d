"""Polling for a condition that another thread or process makes true, with a bound."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], bool], what: str = "the condition", timeout_s: float = 10.0,
             poll_s: float = 0.01) -> None:
    """Return once `condition()` is true; fail the test after `timeout_s` (only when something is broken)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(poll_s)
