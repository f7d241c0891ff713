"""What ``/metrics`` shows: connection, outbox, publish latency, telemetry, jobs, commands, OTA.

All names start with ``edge_agent_``. Counters of the device client and the outbox restart at
zero with each session (a reload); Prometheus' ``rate()`` handles such resets.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import TYPE_CHECKING

from device_sdk import ClientState
from edge_agent._health import MetricsWriter
from edge_agent._version import __version__

if TYPE_CHECKING:
    from edge_agent._agent import Agent, Session

__all__ = ["AgentStats", "render_metrics"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclasses.dataclass
class AgentStats:
    """Outcome counters kept across sessions."""

    jobs: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    commands: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    shadow_updates: int = 0


def _process_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:  # noqa: PTH123 - tiny /proc read
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def render_metrics(agent: Agent, session: Session | None) -> str:
    """The Prometheus text exposition of the agent's state."""
    w = MetricsWriter()
    w.gauge("edge_agent_info", 1, "Agent version.", {"version": __version__})
    w.gauge("edge_agent_uptime_seconds", round(agent.uptime_s, 3), "Seconds since start.")
    w.gauge(
        "edge_agent_firmware_info",
        1,
        "Running firmware version (the active slot's with OTA).",
        {"version": agent.firmware_version()},
    )
    ota = agent.ota
    if ota is not None:
        w.gauge("edge_agent_ota_on_trial", int(ota.on_trial), "1 while an update is on trial.")
        for outcome, count in sorted(ota.outcomes.items()):
            w.counter(
                "edge_agent_ota_updates_total", count, "Updates by outcome.", {"outcome": outcome}
            )
    cpu = time.process_time()
    w.counter("edge_agent_process_cpu_seconds_total", round(cpu, 3), "CPU time of the agent.")
    rss = _process_rss_bytes()
    if rss is not None:
        w.gauge("edge_agent_process_resident_memory_bytes", rss, "Resident memory of the agent.")
    stats = agent.stats
    for outcome, count in sorted(stats.jobs.items()):
        w.counter(
            "edge_agent_jobs_total", count, "Job executions by final status.", {"status": outcome}
        )
    for outcome, count in sorted(stats.commands.items()):
        w.counter("edge_agent_commands_total", count, "Commands by outcome.", {"outcome": outcome})
    w.counter(
        "edge_agent_settings_changes_total",
        stats.shadow_updates,
        "Desired-settings changes applied from the settings shadow.",
    )
    if session is None:
        w.gauge("edge_agent_connected", 0, "1 while connected to IoT Core.")
        return w.text()
    device = session.device
    w.gauge(
        "edge_agent_connected",
        int(device.state is ClientState.CONNECTED),
        "1 while connected to IoT Core.",
    )
    for state in ClientState:
        w.gauge(
            "edge_agent_connection_state",
            int(device.state is state),
            "Connection state (1 for the current one).",
            {"state": str(state)},
        )
    metrics = device.metrics()
    for key, value in sorted(metrics.counters.items()):
        w.counter(f"edge_agent_mqtt_{key}_total", value, f"Device client counter '{key}'.")
    w.histogram(
        "edge_agent_publish_latency_seconds", metrics.puback_latency, "QoS 1 publish to PUBACK."
    )
    w.histogram(
        "edge_agent_publish_end_to_end_seconds",
        metrics.end_to_end_latency,
        "Outbox enqueue to PUBACK (includes time offline).",
    )
    try:
        out = device.outbox_statistics()
    except RuntimeError:
        out = None
    if out is not None:
        w.gauge("edge_agent_outbox_depth", out.depth, "Unacknowledged messages in the outbox.")
        w.gauge("edge_agent_outbox_bytes", out.size_bytes, "Payload bytes in the outbox.")
        w.gauge("edge_agent_outbox_in_flight", out.in_flight, "Messages awaiting PUBACK.")
        w.gauge(
            "edge_agent_outbox_oldest_age_seconds",
            round(out.oldest_age_s, 3),
            "Age of the oldest unacknowledged message.",
        )
        for key in ("enqueued", "acked", "failed", "dropped", "replayed", "recovered"):
            w.counter(f"edge_agent_outbox_{key}_total", getattr(out, key), f"Outbox '{key}'.")
    scheduler = session.scheduler
    for name, s in sorted(scheduler.stats.items()):
        lbl = {"source": name}
        setting = scheduler.settings.telemetry.get(name)
        if setting is not None:
            w.gauge(
                "edge_agent_telemetry_interval_seconds",
                setting.interval_s,
                "Reading interval in force.",
                lbl,
            )
            w.gauge(
                "edge_agent_telemetry_enabled",
                int(setting.enabled),
                "1 if the source is enabled.",
                lbl,
            )
        w.counter(
            "edge_agent_telemetry_readings_total",
            s.readings,
            "Readings published to the outbox.",
            lbl,
        )
        w.counter("edge_agent_telemetry_errors_total", s.errors, "Readings that failed.", lbl)
        w.counter(
            "edge_agent_telemetry_dropped_total", s.dropped, "Readings the outbox refused.", lbl
        )
        for field, reading in sorted(s.numeric.items()):
            w.gauge(
                "edge_agent_telemetry_value",
                reading,
                "Last numeric reading per field.",
                {"source": name, "field": field},
            )
    return w.text()
