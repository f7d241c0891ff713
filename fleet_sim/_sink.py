"""The receiving side: count loss, duplicates and reordering per device.

:class:`SequenceTracker` is pure: feed it ``(device_id, seq)`` pairs in arrival order. Per
device it keeps the highest contiguous sequence number seen and the few seen above it, so
memory stays small however long the run. :class:`Sink` is the shell for a local stub: a
privileged subscriber on ``dt/#`` (the stub's service identity) feeding a tracker and the
``delivery`` latency histogram (``ts`` to arrival, same host clock).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device_sdk import LatencyHistogram, topic_matches
from fleet_sim._mqtt_lite import LiteClient
from fleet_sim._scenario import Scenario

__all__ = ["SequenceTracker", "Sink", "service_connection_settings", "telemetry_filters"]

_log = logging.getLogger(__name__)
_TAIL = re.compile(rb'"device_id":"([^"\\]*)","seq":(\d+),"ts":(\d+)(?:,"run":"([^"\\]*)")?\}$')
_TAIL_SPAN = 300


class SequenceTracker:
    """Loss, duplicate and reordering accounting (see the module documentation).

    Args:
        run_id: Count only messages whose ``run`` field equals it (``None``: all).
    """

    def __init__(self, run_id: str | None = None) -> None:
        self.run_id = run_id
        self._devices: dict[str, list[Any]] = {}
        self.received = 0
        self.duplicates = 0
        self.reordered = 0
        self.foreign = 0
        self.malformed = 0

    def add(self, device: str, seq: int) -> None:
        """Record one arrival."""
        self.received += 1
        state = self._devices.get(device)
        if state is None:
            state = self._devices[device] = [0, 0, None]  # contiguous, highest, above-set
        contiguous, highest, above = state
        if seq <= contiguous or (above is not None and seq in above):
            self.duplicates += 1
            return
        if seq < highest:
            self.reordered += 1
        else:
            state[1] = seq
        if seq == contiguous + 1:
            contiguous = seq
            if above:
                while contiguous + 1 in above:
                    contiguous += 1
                    above.discard(contiguous)
            state[0] = contiguous
        else:
            if above is None:
                above = state[2] = set()
            above.add(seq)

    def add_payload(self, payload: bytes) -> int | None:
        """Parse a simulator message and record it; return its ``ts`` (ms) if counted."""
        tail = _TAIL.search(payload, max(0, len(payload) - _TAIL_SPAN))
        if tail is not None:  # fast path: the simulator appends these fields last
            run = tail.group(4)
            if self.run_id is not None and run is not None and run.decode() != self.run_id:
                self.foreign += 1
                return None
            self.add(tail.group(1).decode(), int(tail.group(2)))
            return int(tail.group(3))
        try:
            body = json.loads(payload)
            device = body["device_id"]
            seq = body["seq"]
        except (ValueError, KeyError, TypeError):
            self.malformed += 1
            return None
        if self.run_id is not None and body.get("run", self.run_id) != self.run_id:
            self.foreign += 1
            return None
        if not isinstance(seq, int) or not isinstance(device, str):
            self.malformed += 1
            return None
        self.add(device, seq)
        ts = body.get("ts")
        return ts if isinstance(ts, int) else None

    @property
    def unique(self) -> int:
        """Distinct messages received."""
        return sum(s[0] + (len(s[2]) if s[2] else 0) for s in self._devices.values())

    def summary(self, *, expected: int | None = None) -> dict[str, Any]:
        """Totals; with ``expected`` (messages the devices committed) also ``lost``."""
        unique = self.unique
        gaps = sum(s[1] - s[0] - (len(s[2]) if s[2] else 0) for s in self._devices.values())
        out: dict[str, Any] = {
            "devices": len(self._devices),
            "received": self.received,
            "unique": unique,
            "duplicates": self.duplicates,
            "reordered": self.reordered,
            "gaps": gaps,
            "foreign": self.foreign,
            "malformed": self.malformed,
        }
        if expected is not None:
            out["expected"] = expected
            out["lost"] = max(0, expected - unique)
        return out


def telemetry_filters(scenario: Scenario) -> list[str]:
    """Subscriptions that receive every group's telemetry and events (deduplicated)."""
    out: list[str] = []
    for group in scenario.groups:
        topics = [group.telemetry.topic.format(thing="+", group=group.name)]
        if group.telemetry.events:
            topics.append("dt/+/events")
        for topic in topics:
            if topic not in out and not any(topic_matches(f, topic) for f in out):
                out.append(topic)
    return out


def service_connection_settings(state_dir: Path, purpose: str) -> tuple[str, ssl.SSLContext]:
    """Client id and TLS context of the stub's privileged service identity."""
    # Only stub targets need cloud_stubs.
    from cloud_stubs import SERVICE_CLIENT_PREFIX, StatePaths  # noqa: PLC0415

    paths = StatePaths.at(state_dir)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(paths.ca_cert))
    ctx.load_cert_chain(str(paths.service_cert), str(paths.service_key))
    client_id = f"{SERVICE_CLIENT_PREFIX}-fleet_sim-{purpose}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return client_id, ctx


class Sink:
    """A privileged subscriber on ``dt/#`` of a local stub (see the module documentation).

    Args:
        state_dir: The stub's state directory (for the service identity).
        host: Broker host.
        port: Broker port.
        run_id: Only this run's messages are counted.
        filters: The devices' telemetry and event topics (see :func:`telemetry_filters`).
        other_filters: More subscriptions whose messages go to ``on_other``.
        on_other: Receives those messages (the operator's command responses).
    """

    def __init__(
        self,
        state_dir: Path,
        host: str,
        port: int,
        run_id: str | None,
        *,
        filters: list[str] | None = None,
        other_filters: list[str] | None = None,
        on_other: Callable[[list[tuple[str, bytes]]], None] | None = None,
    ) -> None:
        self.tracker = SequenceTracker(run_id)
        self.delivery = LatencyHistogram()
        self._state_dir = state_dir
        self._host = host
        self._port = port
        self._filters = filters or ["dt/#"]
        self._other = other_filters or []
        self._on_other = on_other
        self.client: LiteClient | None = None
        self._last_arrival = time.monotonic()

    def _on_messages(self, batch: list[tuple[str, bytes]]) -> None:
        now_ms = time.time() * 1000.0
        self._last_arrival = time.monotonic()
        tracker, delivery = self.tracker, self.delivery
        other: list[tuple[str, bytes]] = []
        others = self._other
        for topic, payload in batch:
            if others and any(topic_matches(f, topic) for f in others):
                other.append((topic, payload))
                continue
            ts = tracker.add_payload(payload)
            if ts is not None:
                delivery.record((now_ms - ts) / 1000.0)
        if other and self._on_other is not None:
            self._on_other(other)

    async def start(self) -> None:
        """Connect and subscribe."""
        client_id, tls = service_connection_settings(self._state_dir, "sink")
        client = LiteClient(client_id, self._on_messages)
        await client.connect(self._host, self._port, tls)
        try:
            await client.subscribe([*self._filters, *self._other])
        except BaseException:
            client.abort()
            raise
        self.client = client

    async def settle(self, expected: int, *, timeout_s: float = 10.0, quiet_s: float = 1.0) -> None:
        """Wait until ``expected`` unique messages arrived, or nothing arrived for ``quiet_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.tracker.unique >= expected:
                return
            if time.monotonic() - self._last_arrival > quiet_s:
                return
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Disconnect."""
        client, self.client = self.client, None
        if client is not None:
            await client.close()

    def summary(self, expected: int | None = None) -> dict[str, Any]:
        """The tracker's summary plus the delivery-latency histogram."""
        return {**self.tracker.summary(expected=expected), "delivery": self.delivery.to_dict()}
