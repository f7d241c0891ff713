"""The telemetry scheduler: each source on its own interval, published through the outbox.

Every reading becomes one QoS 1 message on ``dt/<thing>/telemetry/<source>``::

    {"source": "system", "seq": 41, "boot": "5f0c...", "ts": 1718000000.123, "data": {...}}

``seq`` counts the readings of one source within one agent run (``boot``), so a subscriber can
check that nothing was lost. Interval and enabled flag come from the
:class:`~edge_agent._settings.RuntimeSettings`; a change wakes the source at once and the new
interval counts from the previous reading.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from device_sdk import DeviceSdkError, LimitExceededError, OutboxFullError
from edge_agent._sources import SourceError, TelemetrySource
from edge_agent._tasks import IGNORED, TaskStatus

if TYPE_CHECKING:
    from device_sdk import Clock
    from edge_agent._settings import RuntimeSettings

__all__ = ["SourceStats", "TelemetryScheduler", "telemetry_topic"]

_log = logging.getLogger(__name__)
_MAX_NUMERIC_FIELDS = 64


def telemetry_topic(thing_name: str, source: str) -> str:
    """``dt/<thing>/telemetry/<source>`` (inside IoT Core's default ``dt/<thing>/*`` policy)."""
    return f"dt/{thing_name}/telemetry/{source}"


class Publisher(Protocol):
    """What the scheduler needs from :class:`~device_sdk.DeviceClient`."""

    async def publish(self, topic: str, payload: dict[str, Any]) -> str:
        """Persist a QoS 1 message in the outbox."""
        ...


@dataclasses.dataclass(slots=True)
class SourceStats:
    """Counters of one source (for ``/metrics``)."""

    readings: int = 0
    errors: int = 0
    dropped: int = 0
    last_ok_wall: float | None = None
    last_error: str | None = None
    numeric: dict[str, float] = dataclasses.field(default_factory=dict)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool) or (isinstance(value, int | float) and math.isfinite(value)):
            out[name] = float(value)
        elif isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        if len(out) >= _MAX_NUMERIC_FIELDS:
            break
    return out


class TelemetryScheduler:
    """Runs every source on its own interval and publishes its readings."""

    def __init__(
        self,
        thing_name: str,
        sources: dict[str, TelemetrySource],
        settings: RuntimeSettings,
        publisher: Publisher,
        *,
        clock: Clock,
        logger: logging.Logger | None = None,
    ) -> None:
        self._thing = thing_name
        self._sources = sources
        self._settings = settings
        self._publisher = publisher
        self._clock = clock
        self._log = logger or _log
        self.boot_id = uuid.uuid4().hex
        self.stats = {name: SourceStats() for name in sources}
        self._changed = {name: asyncio.Event() for name in sources}

    @property
    def settings(self) -> RuntimeSettings:
        """The settings in force."""
        return self._settings

    def update_settings(self, settings: RuntimeSettings) -> None:
        """Apply new settings; sources whose settings changed wake up now."""
        old, self._settings = self._settings, settings
        for name, event in self._changed.items():
            if old.telemetry.get(name) != settings.telemetry.get(name):
                self._log.info("telemetry %s: now %s", name, settings.telemetry.get(name))
                event.set()

    async def run(self, *, task_status: TaskStatus = IGNORED) -> None:
        """Run all sources until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for name in self._sources:
                tg.create_task(self._run_source(name), name=f"edge_agent.telemetry[{name}]")
            task_status.started()

    async def _run_source(self, name: str) -> None:
        source = self._sources[name]
        topic = telemetry_topic(self._thing, name)
        seq = 0
        last_read: float | None = None
        while True:
            setting = self._settings.telemetry[name]
            due = last_read + setting.interval_s if last_read is not None else self._clock.now()
            if not setting.enabled:
                await self._changed[name].wait()
                self._changed[name].clear()
                continue
            wait = due - self._clock.now()
            if wait > 0 and await self._sleep_or_change(name, wait):
                continue  # settings changed: recompute the deadline
            last_read = self._clock.now()
            if await self._read_and_publish(name, source, topic, seq):
                seq += 1

    async def _sleep_or_change(self, name: str, seconds: float) -> bool:
        event = self._changed[name]
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waiter.cancel()
        if event.is_set():
            event.clear()
            return True
        return False

    async def _read_and_publish(
        self, name: str, source: TelemetrySource, topic: str, seq: int
    ) -> bool:
        stats = self.stats[name]
        try:
            data = await source.read()
        except SourceError as exc:
            stats.errors += 1
            stats.last_error = str(exc)
            self._log.warning("telemetry %s: no reading: %s", name, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a plugin bug must not stop the other sources
            stats.errors += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"
            self._log.exception("telemetry %s: the source raised", name)
            return False
        payload = {
            "source": name,
            "seq": seq,
            "boot": self.boot_id,
            "ts": round(self._clock.wall(), 3),
            "data": data,
        }
        try:
            await self._publisher.publish(topic, payload)
        except (OutboxFullError, LimitExceededError) as exc:
            stats.dropped += 1
            stats.last_error = str(exc)
            self._log.warning("telemetry %s: reading %d dropped: %s", name, seq, exc)
            return False
        except DeviceSdkError as exc:
            stats.dropped += 1
            stats.last_error = str(exc)
            self._log.warning("telemetry %s: publish failed: %s", name, exc)
            return False
        stats.readings += 1
        stats.last_ok_wall = payload["ts"]  # type: ignore[assignment]
        stats.last_error = None
        stats.numeric = _flatten(data)
        return True
