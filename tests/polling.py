"""Bounded polling for tests: wait for a condition with a deadline, never a
timed assertion. ``wait_until`` returns the condition's last value (so a
test can use what it waited for); tests/serial_fixtures.py ``wait_for``
is the older boolean form the serial tests use.
"""

from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(pred: Callable[[], Any], timeout: float = 60.0, step: float = 0.1) -> Any:
    """Poll ``pred()`` every ``step`` seconds until it is truthy or ``timeout``
    passes; returns its last value (falsy on a timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step)
    return pred()
