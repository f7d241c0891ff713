"""What the CLI shows: a rich live panel on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.live import Live
from rich.table import Table

from fleet_sim._live import LiveState

__all__ = ["LiveDisplay", "PlainDisplay", "interactive", "print_summary"]

_PLAIN_EVERY_S = 5.0


def interactive(console: Console) -> bool:
    """A live panel only on a real terminal and outside CI."""
    ci = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
    return console.is_terminal and not ci and sys.stdin.isatty()


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.1f} ms"


def progress_line(s: LiveState) -> str:
    """One line of progress."""
    line = (
        f"t={s.elapsed_s:4.0f}s/{s.duration_s:.0f}s connected={s.connected}/{s.devices} "
        f"msg/s={s.rate:.0f} sent={s.sent} acked={s.acked} p50={_ms(s.p50_s)} "
        f"p99={_ms(s.p99_s)} errors={s.errors} cpu={s.cpu_pct:.0f}% "
        f"rss={s.rss_bytes / 2**20:.0f}MiB"
    )
    if s.received is not None:
        line += f" sink={s.received}"
    return line


class PlainDisplay:
    """Periodic plain lines (for CI logs and pipes)."""

    def __init__(self, console: Console, *, every_s: float = _PLAIN_EVERY_S) -> None:
        self._console = console
        self._every = every_s
        self._last = -1e9
        self._last_line = ""

    def on_event(self, text: str) -> None:
        """Print a status line."""
        self._console.print(text, markup=False, highlight=False)

    def on_progress(self, state: LiveState) -> None:
        """Print a progress line every few seconds."""
        if state.final or state.elapsed_s - self._last >= self._every:
            self._last = state.elapsed_s
            line = progress_line(state)
            if line != self._last_line:
                self._last_line = line
                self._console.print(line, markup=False, highlight=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class LiveDisplay:
    """A rich panel refreshed every second."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._live = Live(console=console, auto_refresh=False, transient=False)

    def _table(self, s: LiveState) -> Table:
        table = Table(title="fleet-sim", title_justify="left", show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        done = min(1.0, s.elapsed_s / s.duration_s) if s.duration_s else 1.0
        bar = "█" * int(done * 30) + "░" * (30 - int(done * 30))
        table.add_row("time", f"{bar} {s.elapsed_s:.0f}/{s.duration_s:.0f} s")
        table.add_row(
            "connected",
            f"{s.connected:,} / {s.devices:,}  (failed connects: {s.connect_failures:,})",
        )
        table.add_row("messages", f"{s.rate:,.0f} msg/s   sent {s.sent:,}   acked {s.acked:,}")
        table.add_row("PUBACK latency", f"p50 {_ms(s.p50_s)}   p99 {_ms(s.p99_s)}")
        table.add_row("errors", f"[{'red' if s.errors else 'green'}]{s.errors:,}[/]")
        table.add_row(
            "simulator",
            f"CPU {s.cpu_pct:.0f}%   RSS {s.rss_bytes / 2**20:.0f} MiB   processes {s.workers}",
        )
        if s.received is not None:
            table.add_row("sink", f"{s.received:,} received")
        return table

    def on_event(self, text: str) -> None:
        """Print a status line above the panel."""
        self._live.console.print(text, markup=False, highlight=False)

    def on_progress(self, state: LiveState) -> None:
        """Redraw."""
        self._live.update(self._table(state), refresh=True)

    def __enter__(self) -> Self:
        self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.__exit__(exc_type, exc, tb)


def _lat(d: dict[str, Any]) -> str:
    return f"p50 {_ms(d.get('p50_s'))}, p99 {_ms(d.get('p99_s'))}, max {_ms(d.get('max_s'))}"


def print_summary(console: Console, report: dict[str, Any]) -> None:
    """The end-of-run summary table."""
    s = report["summary"]
    c, m, p = s["connects"], s["messages"], s["process"]
    t = Table(
        title=f"fleet-sim: {report['scenario']['name']} (run {report['run_id']})",
        title_justify="left",
        show_header=False,
    )
    t.add_column(style="bold")
    t.add_column()
    t.add_row(
        "devices", f"{s['devices']:,} in {s['processes']} process(es), {s['duration_s']:.1f} s"
    )
    t.add_row(
        "connects",
        f"{c['ok']:,} ok / {c['attempted']:,} attempted / {c['failed']:,} "
        f"failed; {c['per_second'] or '—'}/s; latency {_lat(c['latency'])}",
    )
    if c["failed_by_reason"]:
        t.add_row(
            "connect failures", ", ".join(f"{k}: {v}" for k, v in c["failed_by_reason"].items())
        )
    t.add_row(
        "messages",
        f"{m['sent']:,} sent, {m['acked']:,} acked; "
        f"{m['achieved_per_s'] or m['average_per_s']} msg/s (target {m['target_per_s']})",
    )
    t.add_row("publish→PUBACK", _lat(s["puback_latency"]))
    sh = s["shadow"]
    t.add_row(
        "shadow",
        f"{sh['updates']:,} updates ({sh['accepted']:,} accepted, "
        f"{sh['rejected']:,} rejected), {sh['deltas']:,} deltas; "
        f"round trip {_lat(sh['round_trip'])}",
    )
    handled = s["commands"]["handled"]
    if handled:
        t.add_row("commands", ", ".join(f"{k}: {v}" for k, v in sorted(handled.items())))
    if "operator" in s:
        op = s["operator"]
        t.add_row(
            "operator",
            f"{op['commands_sent']} commands, {op['desired_sent']} desired "
            f"changes; command round trip {_lat(op['command_rtt'])}",
        )
    if "ota" in s:
        t.add_row("ota", ", ".join(f"{k}: {v}" for k, v in sorted(s["ota"].items())))
    for dep in s.get("operator", {}).get("deployments", []):
        reason = f" ({dep['reason']})" if dep.get("reason") else ""
        t.add_row(
            "deployment",
            f"{dep.get('deployment_id', '—')} -> {dep.get('version')} on "
            f"{', '.join(dep.get('groups', []))}: {dep.get('status', '—')}{reason}",
        )
    if "sink" in s:
        sk = s["sink"]
        lost = sk["lost"]
        color = "green" if not lost and not sk["duplicates"] else "yellow"
        t.add_row(
            "sink",
            f"[{color}]{sk['unique']:,} unique of {sk['received']:,} received; "
            f"lost {lost}, duplicates {sk['duplicates']}, reordered {sk['reordered']}[/]",
        )
    errors = s["errors"]
    t.add_row(
        "errors",
        "0"
        if not errors["total"]
        else ", ".join(f"{k}: {v}" for k, v in sorted(errors["by_kind"].items())),
    )
    rss = p["rss_per_device_bytes"]
    t.add_row(
        "simulator",
        f"CPU {p['cpu_s']:.1f} s, {p['steady_acked_per_cpu_s'] or '—'} acked "
        f"msgs per CPU-s (steady), peak RSS {(p['rss_peak_bytes'] or 0) / 2**20:.0f} MiB, "
        f"{'—' if rss is None else f'{rss / 1024:.1f} KiB'} per device",
    )
    console.print(t)
