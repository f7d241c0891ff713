"""Pure test doubles for time (no I/O)."""

from __future__ import annotations

import asyncio


class FakeClock:
    """A clock whose ``sleep`` advances virtual time instantly."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.t = start
        self.wall_t = wall
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.wall_t

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.wall_t += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)
