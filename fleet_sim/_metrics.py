"""Run metrics: counters, mergeable latency histograms and a per-second time series.

One :class:`RunMetrics` lives in each shard process and is updated in place by the engine
(one event loop, no locks). :meth:`RunMetrics.snapshot` gives a JSON-ready dict; snapshots of
several shards merge with :func:`merge_snapshots` (counters add, histograms merge bucket by
bucket, time-series points with the same second add up), so a live view and the final report
of N processes are exactly what one process running all devices would have measured.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from device_sdk import ClientMetrics, LatencyHistogram
from fleet_sim._proc import cpu_seconds, rss_bytes

__all__ = ["HISTOGRAMS", "RunMetrics", "merge_snapshots", "series_histogram"]

HISTOGRAMS = (
    "connect",
    "puback",
    "shadow_rtt",
    "command_handling",
    "command_rtt",
    "delivery",
)
"""Histogram names: connect (TCP+TLS+CONNACK), puback (publish to PUBACK), shadow_rtt
(update to accepted/rejected), command_handling (request received to response sent, on the
device), command_rtt (operator: request to response), delivery (sink: ``ts`` to arrival)."""

_CLIENT_COUNTS = (
    ("acked", "counters", "acked"),
    ("nacked", "errors", "nack:outbox"),
    ("ack_timeouts", "errors", "publish:ack_timeout"),
)
"""DeviceClient counters folded into the run's: (client name, where, run name)."""

_SERIES_KEYS = ("connected", "sent", "acked", "errors", "connect_failures", "received")


def series_histogram(point: dict[str, Any]) -> LatencyHistogram:
    """The publish-to-PUBACK histogram of one time-series point."""
    data = point.get("puback")
    return LatencyHistogram.from_dict(data) if data else LatencyHistogram()


class RunMetrics:
    """Live metrics of one shard (see the module documentation).

    Args:
        devices: Devices this shard runs.
        start_wall: Wall-clock start of the whole run (shared by all shards, so their
            time series align).
    """

    def __init__(self, devices: int, start_wall: float) -> None:
        self.devices = devices
        self.start_wall = start_wall
        self.counters: collections.Counter[str] = collections.Counter()
        self.connect_failures: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.commands: collections.Counter[str] = collections.Counter()
        self.histograms = {name: LatencyHistogram() for name in HISTOGRAMS}
        self.connected = 0
        self.first_connect: float | None = None
        self.last_connect: float | None = None
        self.all_connected_at: float | None = None
        self.series: list[dict[str, Any]] = []
        # The devices' clients record their telemetry PUBACKs straight into this shared
        # ClientMetrics (DeviceClient(metrics=...)): no per-message callback here. Its
        # puback histogram is the current one-second interval; sample() folds it into
        # histograms["puback"] and clears it in place.
        self.client_metrics = ClientMetrics({}, LatencyHistogram(), LatencyHistogram())
        self._interval_puback = self.client_metrics.puback_latency
        self._client_seen: dict[str, int] = {}
        self._last_totals = dict.fromkeys(_SERIES_KEYS, 0)
        self._cpu0 = cpu_seconds()
        self._last_cpu = self._cpu0
        self.rss_baseline = rss_bytes()
        self.rss_peak = self.rss_baseline
        self.rss_connected: int | None = None

    # -- recording (hot paths: keep them small) ----------------------------------------------

    def connect_attempt(self) -> None:
        """A connection attempt starts."""
        self.counters["connect_attempts"] += 1
        if self.first_connect is None:
            self.first_connect = time.time()

    def connect_ok(self, seconds: float) -> None:
        """A connection attempt succeeded after ``seconds``."""
        self.counters["connects"] += 1
        self.histograms["connect"].record(seconds)
        self.connected += 1
        self.last_connect = time.time()

    def connect_failed(self, reason: str) -> None:
        """A connection attempt failed."""
        self.counters["connect_failures"] += 1
        self.connect_failures[reason] += 1

    def disconnected(self, reason: str | None) -> None:
        """An established connection ended (``reason`` is ``None`` for a clean close)."""
        self.connected -= 1
        self.counters["disconnects"] += 1
        if reason is not None:
            self.errors[f"disconnect:{reason}"] += 1

    def acked(self, seconds: float) -> None:
        """A QoS 1 publish was acknowledged ``seconds`` after it was handed to the transport.

        For publishes that bypass the clients' outbox (awaited on a non-pipelined transport);
        the outbox's PUBACKs arrive through :attr:`client_metrics`.
        """
        self.counters["acked"] += 1
        self._interval_puback.record(seconds)

    def _sync_clients(self) -> None:
        """Fold the clients' counts in: acked messages, refused ones and ack timeouts."""
        counts = self.client_metrics.counters
        seen = self._client_seen
        for name, into, key in _CLIENT_COUNTS:
            value = counts.get(name, 0)
            delta = value - seen.get(name, 0)
            if delta:
                seen[name] = value
                (self.counters if into == "counters" else self.errors)[key] += delta

    def puback_histogram(self) -> LatencyHistogram:
        """Publish-to-PUBACK latency of the whole run so far (a copy)."""
        total = self.histograms["puback"].copy()
        total.merge(self._interval_puback)
        return total

    def error(self, kind: str) -> None:
        """Count an error of ``kind``."""
        self.errors[kind] += 1

    # -- sampling ----------------------------------------------------------------------------

    @property
    def error_total(self) -> int:
        """All errors and failed connects so far."""
        return sum(self.errors.values())

    def sample(self) -> dict[str, Any]:
        """Close the current one-second interval and append it to :attr:`series`."""
        self._sync_clients()
        now = time.time()
        cpu = cpu_seconds()
        rss = rss_bytes()
        self.rss_peak = max(self.rss_peak, rss)
        totals = {
            "connected": self.connected,
            "sent": self.counters["sent"],
            "acked": self.counters["acked"],
            "errors": self.error_total,
            "connect_failures": self.counters["connect_failures"],
            "received": self.counters["sink_received"],
        }
        point: dict[str, Any] = {"t": round(now - self.start_wall), "connected": self.connected}
        for key in _SERIES_KEYS[1:]:
            point[key] = totals[key] - self._last_totals[key]
        point["cpu"] = round(cpu - self._last_cpu, 4)
        point["rss"] = rss
        interval = self._interval_puback
        point["puback"] = interval.to_dict() if interval.count else None
        self.histograms["puback"].merge(interval)
        interval.clear()
        self._last_totals = totals
        self._last_cpu = cpu
        self.series.append(point)
        return point

    def snapshot(self) -> dict[str, Any]:
        """Everything measured so far, JSON-ready (see :func:`merge_snapshots`)."""
        self._sync_clients()
        histograms = {k: h.to_dict() for k, h in self.histograms.items()}
        histograms["puback"] = self.puback_histogram().to_dict()
        return {
            "devices": self.devices,
            "connected": self.connected,
            "counters": dict(self.counters),
            "connect_failures": dict(self.connect_failures),
            "errors": dict(self.errors),
            "commands": dict(self.commands),
            "histograms": histograms,
            "first_connect": self.first_connect,
            "last_connect": self.last_connect,
            "all_connected_at": self.all_connected_at,
            "series": list(self.series),
            "process": {
                "cpu_s": round(cpu_seconds() - self._cpu0, 3),
                "rss_bytes": rss_bytes(),
                "rss_peak_bytes": self.rss_peak,
                "rss_baseline_bytes": self.rss_baseline,
                "rss_connected_bytes": self.rss_connected,
                "processes": 1,
            },
        }


def _add(into: dict[str, int], other: dict[str, int]) -> None:
    for key, value in other.items():
        into[key] = into.get(key, 0) + int(value)


def _merge_hist(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    if not a:
        return b
    if not b:
        return a
    h = LatencyHistogram.from_dict(a)
    h.merge(LatencyHistogram.from_dict(b))
    return h.to_dict()


def _opt(fn: Any, values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return fn(present) if present else None


def merge_series(series: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Add up time-series points of several shards second by second."""
    by_t: dict[int, dict[str, Any]] = {}
    for points in series:
        for p in points:
            q = by_t.get(p["t"])
            if q is None:
                by_t[p["t"]] = dict(p)
                continue
            for key in (*_SERIES_KEYS, "rss"):
                q[key] = q.get(key, 0) + p.get(key, 0)
            q["cpu"] = round(q.get("cpu", 0.0) + p.get("cpu", 0.0), 4)
            q["puback"] = _merge_hist(q.get("puback"), p.get("puback"))
    return [by_t[t] for t in sorted(by_t)]


def merge_snapshots(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """One snapshot equivalent to the given shards' snapshots together."""
    if not snapshots:
        raise ValueError("nothing to merge")
    if len(snapshots) == 1:
        return snapshots[0]
    out: dict[str, Any] = {
        "devices": sum(s["devices"] for s in snapshots),
        "connected": sum(s["connected"] for s in snapshots),
    }
    for key in ("counters", "connect_failures", "errors", "commands"):
        merged: dict[str, int] = {}
        for s in snapshots:
            _add(merged, s.get(key, {}))
        out[key] = merged
    hists: dict[str, Any] = {}
    for name in HISTOGRAMS:
        parts = [
            LatencyHistogram.from_dict(s["histograms"][name])
            for s in snapshots
            if name in s.get("histograms", {})
        ]
        hists[name] = LatencyHistogram.merged(parts).to_dict()
    out["histograms"] = hists
    out["first_connect"] = _opt(min, [s.get("first_connect") for s in snapshots])
    out["last_connect"] = _opt(max, [s.get("last_connect") for s in snapshots])
    done = [s.get("all_connected_at") for s in snapshots]
    out["all_connected_at"] = max(done) if all(d is not None for d in done) else None  # type: ignore[type-var]
    out["series"] = merge_series([s.get("series", []) for s in snapshots])
    procs = [s["process"] for s in snapshots]
    out["process"] = {
        "cpu_s": round(sum(p["cpu_s"] for p in procs), 3),
        "rss_bytes": sum(p["rss_bytes"] for p in procs),
        "rss_peak_bytes": sum(p["rss_peak_bytes"] for p in procs),
        "rss_baseline_bytes": sum(p["rss_baseline_bytes"] for p in procs),
        "rss_connected_bytes": (
            None
            if any(p.get("rss_connected_bytes") is None for p in procs)
            else sum(p["rss_connected_bytes"] for p in procs)
        ),
        "processes": sum(p.get("processes", 1) for p in procs),
    }
    return out
