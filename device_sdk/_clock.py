"""Injectable time: a small :class:`Clock` protocol and the default loop-backed clock.

Rate limiting, backoff and latency measurement read time only through a ``Clock`` so tests
and the fleet simulator can substitute virtual time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Monotonic time, wall time and sleeping."""

    def now(self) -> float:
        """Monotonic seconds (only differences are meaningful)."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch (persisted timestamps)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``asyncio.sleep``."""

    def now(self) -> float:
        """Monotonic seconds."""
        return time.monotonic()

    def wall(self) -> float:
        """Seconds since the Unix epoch."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the running loop."""
        await asyncio.sleep(seconds)
