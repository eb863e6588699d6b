"""The asyncio poller of tests (and of the scripts they run in namespaces): waits, bounded, for a condition.
tests/netns.py has the blocking one, wait_for."""
from __future__ import annotations

import asyncio
import time


async def eventually(predicate, timeout: float = 5.0, what: str = "condition", interval: float = 0.02) -> None:
    """Waits until predicate() is true; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(interval)
