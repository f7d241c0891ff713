"""Live progress: per-shard samples merged into one view of the whole run."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from typing import Any, Protocol

from device_sdk import LatencyHistogram
from fleet_sim._metrics import series_histogram

__all__ = ["LiveAggregator", "LiveState", "Observer"]

_WINDOW = 5


@dataclasses.dataclass(frozen=True, slots=True)
class LiveState:
    """The whole run right now (all shards).

    Attributes:
        elapsed_s: Wall seconds since the start.
        duration_s: Planned duration.
        devices: Devices in the run.
        connected: Devices connected now.
        sent: Messages committed to the outboxes so far.
        acked: Messages acknowledged by the broker so far.
        rate: Acknowledged messages per second over the last second.
        p50_s: Publish-to-PUBACK median over the last few seconds.
        p99_s: Its 99th percentile.
        errors: Errors so far.
        connect_failures: Failed connection attempts so far.
        cpu_pct: CPU of the simulator processes over the last second (100 = one core).
        rss_bytes: Their resident memory.
        workers: Shard processes reporting.
        received: Messages the sink received (when there is one).
        final: This is the last state of the run (devices have stopped).
    """

    elapsed_s: float
    duration_s: float
    devices: int
    connected: int
    sent: int
    acked: int
    rate: float
    p50_s: float | None
    p99_s: float | None
    errors: int
    connect_failures: int
    cpu_pct: float
    rss_bytes: int
    workers: int
    received: int | None = None
    final: bool = False


class Observer(Protocol):
    """Receives what a run wants to show (a live display, a log, a test)."""

    def on_event(self, text: str) -> None:
        """A one-line status message (stub started, identities provisioned, ...)."""
        ...

    def on_progress(self, state: LiveState) -> None:
        """Called about once a second while devices run."""
        ...


class LiveAggregator:
    """Keeps each shard's latest totals and recent points; merges them on demand."""

    def __init__(self, devices: int, duration_s: float) -> None:
        self.devices = devices
        self.duration_s = duration_s
        self.start_wall: float | None = None
        self._totals: dict[int, dict[str, Any]] = {}
        self._points: dict[int, collections.deque[dict[str, Any]]] = {}
        self.received: int | None = None
        self.started = asyncio.Event()
        self.all_connected = asyncio.Event()

    def start(self) -> float:
        """Mark the start of the run now; return the wall-clock time."""
        self.start_wall = time.time()
        self.started.set()
        return self.start_wall

    def update(self, shard: int, point: dict[str, Any], totals: dict[str, Any]) -> None:
        """Record shard ``shard``'s latest sample."""
        self._totals[shard] = totals
        self._points.setdefault(shard, collections.deque(maxlen=_WINDOW)).append(point)
        if self.connected >= self.devices:
            self.all_connected.set()

    @property
    def connected(self) -> int:
        """Connected devices over all shards."""
        return sum(int(t.get("connected", 0)) for t in self._totals.values())

    @property
    def sampled(self) -> bool:
        """Whether any shard has reported a sample yet."""
        return bool(self._totals)

    def state(self, *, final: bool = False) -> LiveState:
        """The merged view."""
        totals = self._totals.values()
        last = [p[-1] for p in self._points.values() if p]
        hist = LatencyHistogram.merged(
            [series_histogram(p) for pts in self._points.values() for p in pts]
        )
        elapsed = time.time() - self.start_wall if self.start_wall is not None else 0.0
        return LiveState(
            elapsed_s=max(0.0, elapsed),
            duration_s=self.duration_s,
            devices=self.devices,
            connected=self.connected,
            sent=sum(int(t.get("sent", 0)) for t in totals),
            acked=sum(int(t.get("acked", 0)) for t in totals),
            rate=float(sum(p.get("acked", 0) for p in last)),
            p50_s=hist.quantile(0.5) if hist.count else None,
            p99_s=hist.quantile(0.99) if hist.count else None,
            errors=sum(int(t.get("errors", 0)) for t in totals),
            connect_failures=sum(int(t.get("connect_failures", 0)) for t in totals),
            cpu_pct=100.0 * sum(float(p.get("cpu", 0.0)) for p in last),
            rss_bytes=sum(int(p.get("rss", 0)) for p in last),
            workers=len(self._totals),
            received=self.received,
            final=final,
        )
