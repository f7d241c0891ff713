"""Simulated time and the shard's tick scheduler.

:class:`SimClock` satisfies :class:`device_sdk.Clock`: simulated time runs ``scale`` times as
fast as the wall clock. Device models and telemetry cadences use it; the MQTT clients keep the
real clock (the broker, keep-alives and IoT Core's rate limits live in real time).

:class:`Scheduler` wakes devices at their next telemetry time. Instead of one timer per device
it keeps one heap and releases everything due at each tick (20 ms by default), so the devices
due in the same tick publish in the same event-loop iteration: their outbox inserts share one
SQLite transaction and the loop wakes up once per tick instead of once per message. A stopped
scheduler answers every wait with ``False`` at once, which is how devices learn the run ended.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable

__all__ = ["Scheduler", "SimClock"]

_log = logging.getLogger(__name__)


class SimClock:
    """Simulated time: ``scale`` simulated seconds per wall-clock second.

    Args:
        scale: Speed-up factor (1.0: real time).
        start_wall: Simulated epoch time at the start (default: now).
    """

    def __init__(self, scale: float = 1.0, *, start_wall: float | None = None) -> None:
        if scale <= 0:
            raise ValueError("scale must be positive")
        self.scale = scale
        self._mono0 = time.monotonic()
        self._wall0 = time.time() if start_wall is None else start_wall

    def now(self) -> float:
        """Simulated seconds since the start."""
        return (time.monotonic() - self._mono0) * self.scale

    def wall(self) -> float:
        """Simulated seconds since the epoch."""
        return self._wall0 + self.now()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of simulated time."""
        await asyncio.sleep(max(0.0, seconds) / self.scale)

    def to_wall_delay(self, sim_seconds: float) -> float:
        """Wall-clock seconds for ``sim_seconds`` of simulated time."""
        return sim_seconds / self.scale


class Scheduler:
    """Releases waiting devices tick by tick (see the module documentation).

    Args:
        clock: Simulated time; wait times are :meth:`SimClock.now` values.
        tick_s: Wall-clock granularity.
    """

    def __init__(self, clock: SimClock, *, tick_s: float = 0.02) -> None:
        if tick_s <= 0:
            raise ValueError("tick_s must be positive")
        self.clock = clock
        self.tick_s = tick_s
        self._heap: list[tuple[float, int, asyncio.Future[bool] | Callable[[], None]]] = []
        self._order = itertools.count()
        self._stopped = False
        self._work = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopped

    def wait_until(self, when: float) -> asyncio.Future[bool]:
        """A future that becomes ``True`` at simulated time ``when`` (``False`` if stopped)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        if self._stopped:
            fut.set_result(False)
            return fut
        heapq.heappush(self._heap, (when, next(self._order), fut))
        self._work.set()
        return fut

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback()`` at simulated time ``when`` (never, once stopped).

        For work that needs no task: the callback runs inside the scheduler's tick, with
        everything else due then, and may schedule itself again. Exceptions are logged.
        """
        if self._stopped:
            return
        heapq.heappush(self._heap, (when, next(self._order), callback))
        self._work.set()

    def sleep(self, sim_seconds: float) -> asyncio.Future[bool]:
        """Like :meth:`wait_until`, ``sim_seconds`` from now."""
        return self.wait_until(self.clock.now() + sim_seconds)

    def release_due(self) -> int:
        """Wake everything due now; return how many were woken."""
        heap = self._heap
        now = self.clock.now()
        woken = 0
        due: list[Callable[[], None]] = []
        while heap and heap[0][0] <= now:
            target = heapq.heappop(heap)[2]
            if isinstance(target, asyncio.Future):
                if not target.done():
                    target.set_result(True)
                    woken += 1
            else:
                due.append(target)
        # Callbacks run after the heap walk: one that reschedules itself for "now" (a device
        # that fell behind) runs at the next tick, not again in this loop.
        for callback in due:
            try:
                callback()
            except Exception:  # noqa: BLE001 - one device's bug must not stop the others
                _log.exception("scheduled callback %r failed", callback)
        return woken + len(due)

    async def run(self) -> None:
        """Tick until stopped."""
        while not self._stopped:
            if not self._heap:
                self._work.clear()
                await self._work.wait()
                continue
            await asyncio.sleep(self.tick_s)
            self.release_due()

    def stop(self) -> None:
        """Answer every current and future wait with ``False``."""
        self._stopped = True
        self._work.set()
        for _, _, target in self._heap:
            if isinstance(target, asyncio.Future) and not target.done():
                target.set_result(False)
        self._heap.clear()
