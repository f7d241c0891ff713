"""System metrics read straight from ``/proc`` and ``/sys`` (no dependency).

``psutil`` is not needed: everything the built-in source reports is one small file read.
:class:`CpuSampler` keeps the previous ``/proc/stat`` sample, so CPU usage is the share of
busy time since the last reading (the first reading compares with the process start).
The functions are synchronous and cheap; the source calls them in a worker thread anyway
because ``/proc`` reads can stall on a busy SD-card system.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = [
    "CpuSampler",
    "cpu_temperature_c",
    "disk_usage",
    "load_average",
    "memory",
    "system_snapshot",
    "uptime_s",
]

_PROC = Path("/proc")
_THERMAL = Path("/sys/class/thermal")
_MILLI = 1000.0
_IOWAIT = 4


class CpuSampler:
    """CPU busy percentage between successive calls, from the ``cpu`` line of ``/proc/stat``."""

    def __init__(self, proc: Path = _PROC) -> None:
        self._stat = proc / "stat"
        self._last = self._read()

    def _read(self) -> tuple[int, int] | None:
        try:
            with self._stat.open() as fh:
                fields = fh.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        values = [int(v) for v in fields[1:]]
        idle = values[3] + (values[4] if len(values) > _IOWAIT else 0)  # idle + iowait
        return sum(values[:8]), idle  # steal included; guest is already in user

    def percent(self) -> float | None:
        """Busy share of all CPUs since the previous call, 0..100, or ``None`` if unknown."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None:
            return None
        total, idle = now[0] - last[0], now[1] - last[1]
        if total <= 0:
            return 0.0
        return round(100.0 * (total - idle) / total, 2)


def memory(proc: Path = _PROC) -> dict[str, int]:
    """``mem_total_bytes``, ``mem_available_bytes``, ``swap_used_bytes`` from ``/proc/meminfo``."""
    values: dict[str, int] = {}
    try:
        with (proc / "meminfo").open() as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if parts:
                    values[key] = int(parts[0]) * 1024
    except (OSError, ValueError):
        return {}
    out = {}
    if "MemTotal" in values:
        out["mem_total_bytes"] = values["MemTotal"]
    if "MemAvailable" in values:
        out["mem_available_bytes"] = values["MemAvailable"]
    if "SwapTotal" in values and "SwapFree" in values:
        out["swap_used_bytes"] = values["SwapTotal"] - values["SwapFree"]
    return out


def uptime_s(proc: Path = _PROC) -> float | None:
    """System uptime from ``/proc/uptime``."""
    try:
        return float((proc / "uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def load_average(proc: Path = _PROC) -> list[float] | None:
    """1, 5 and 15 minute load averages from ``/proc/loadavg``."""
    try:
        return [float(v) for v in (proc / "loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def disk_usage(path: str) -> dict[str, int] | None:
    """Total and free bytes of the file system holding ``path`` (``statvfs``)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return {"total_bytes": st.f_blocks * st.f_frsize, "free_bytes": st.f_bavail * st.f_frsize}


def cpu_temperature_c(thermal: Path = _THERMAL) -> float | None:
    """The CPU temperature in °C from ``/sys/class/thermal`` (``None`` where there is none).

    Prefers a zone whose type names the CPU or SoC (``cpu-thermal`` on a Raspberry Pi,
    ``x86_pkg_temp`` on a PC), else the first zone that reads.
    """
    try:
        zones = sorted(thermal.glob("thermal_zone*"))
    except OSError:
        return None
    readings: list[tuple[bool, float]] = []
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip().lower()
            milli = int((zone / "temp").read_text().strip())
        except (OSError, ValueError):
            continue
        preferred = any(word in kind for word in ("cpu", "soc", "x86_pkg", "core"))
        readings.append((preferred, milli / _MILLI))
    for preferred, value in readings:
        if preferred:
            return value
    return readings[0][1] if readings else None


def system_snapshot(
    sampler: CpuSampler,
    disk_paths: list[str],
    *,
    proc: Path = _PROC,
    thermal: Path = _THERMAL,
) -> dict[str, Any]:
    """One reading of the built-in ``system`` source (keys absent when unknown)."""
    data: dict[str, Any] = {}
    cpu = sampler.percent()
    if cpu is not None:
        data["cpu_percent"] = cpu
    data.update(memory(proc))
    if "mem_total_bytes" in data and "mem_available_bytes" in data and data["mem_total_bytes"]:
        used = data["mem_total_bytes"] - data["mem_available_bytes"]
        data["mem_used_percent"] = round(100.0 * used / data["mem_total_bytes"], 2)
    up = uptime_s(proc)
    if up is not None:
        data["uptime_s"] = up
    load = load_average(proc)
    if load is not None:
        data["load_1m"], data["load_5m"], data["load_15m"] = load
    disks = {}
    for path in disk_paths:
        usage = disk_usage(path)
        if usage is not None:
            disks[path] = usage
    if disks:
        data["disks"] = disks
    temp = cpu_temperature_c(thermal)
    if temp is not None:
        data["cpu_temp_c"] = temp
    return data
