"""The loop of a service that keeps kernel state as configured: a pass every `interval` seconds (repairing what
others changed) and soon after a wake-up (the configuration or the routes changed)."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def run_passes(step: Callable[[], Awaitable[None]], wake: asyncio.Event, interval: float,
                     coalesce: float = 0.0) -> None:
    """`step` runs `interval` seconds after the last pass ended, or as soon as `wake` is set; wake-ups within
    `coalesce` seconds of each other make one pass."""
    while True:
        try:
            await asyncio.wait_for(wake.wait(), interval)
        except asyncio.TimeoutError:
            pass
        if coalesce:
            await asyncio.sleep(coalesce)
        wake.clear()
        await step()
