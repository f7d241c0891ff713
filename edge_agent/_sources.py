"""Telemetry sources: the built-in system metrics, command output, and entry-point plugins.

A source is anything with a ``name`` and an ``async read()`` returning a JSON object::

    class Modbus:
        def __init__(self, name: str, options: Mapping[str, Any]) -> None:
            self.name = name
            ...

        async def read(self) -> dict[str, Any]:
            return {"flow_l_min": 12.5}

Plugins register a factory with that signature in the ``edge_agent.sources`` entry-point
group (``modbus = "my_pkg.sources:Modbus"``) and are named in ``[[telemetry.plugin]]``.
Each source runs on its own interval in :class:`~edge_agent._telemetry.TelemetryScheduler`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from edge_agent._errors import ConfigError
from edge_agent._process import run_program
from edge_agent._sysinfo import CpuSampler, system_snapshot

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from edge_agent._config import CommandSourceConfig, PluginSourceConfig, TelemetryConfig

__all__ = [
    "ENTRY_POINT_GROUP",
    "CommandSource",
    "SourceError",
    "SystemSource",
    "TelemetrySource",
    "build_sources",
    "parse_output",
]

ENTRY_POINT_GROUP = "edge_agent.sources"
_log = logging.getLogger(__name__)


class SourceError(Exception):
    """A source could not produce a reading this time (logged and counted, never fatal)."""


@runtime_checkable
class TelemetrySource(Protocol):
    """One telemetry source."""

    @property
    def name(self) -> str:
        """Name, used as the last topic level."""
        ...

    async def read(self) -> dict[str, Any]:
        """One reading as a JSON object; raise :class:`SourceError` when there is none."""
        ...


class SystemSource:
    """CPU, memory, disk, load, uptime and CPU temperature from ``/proc`` and ``/sys``."""

    def __init__(self, disk_paths: list[str]) -> None:
        self._name = "system"
        self._disk_paths = list(disk_paths)
        self._sampler = CpuSampler()

    @property
    def name(self) -> str:
        """Always ``system``."""
        return self._name

    async def read(self) -> dict[str, Any]:
        """A snapshot (read in a worker thread: ``/proc`` can stall on a busy SD card)."""
        return await asyncio.to_thread(system_snapshot, self._sampler, self._disk_paths)


def parse_output(text: str, fmt: str) -> dict[str, Any]:
    """Parse a program's output: a JSON object, or ``key=value`` lines (numbers become numbers).

    Raises:
        SourceError: The output is not in the expected format.
    """
    if fmt == "json":
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise SourceError(f"output is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise SourceError(f"output is JSON but not an object: {type(value).__name__}")
        return value
    out: dict[str, Any] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise SourceError(f"line {line[:60]!r} is not key=value")
        out[key.strip()] = _number(value.strip())
    return out


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class CommandSource:
    """Runs a program on each reading and parses its standard output."""

    def __init__(self, config: CommandSourceConfig, *, max_output_bytes: int = 65536) -> None:
        self._config = config
        self._max = max_output_bytes

    @property
    def name(self) -> str:
        """The configured name."""
        return self._config.name

    async def read(self) -> dict[str, Any]:
        """Run the program; its output is the reading."""
        result = await run_program(
            self._config.argv, timeout_s=self._config.timeout_s, max_output_bytes=self._max
        )
        if result.error is not None:
            raise SourceError(result.error)
        if result.timed_out:
            raise SourceError(f"timed out after {self._config.timeout_s:g} s")
        if result.returncode != 0:
            raise SourceError(f"exited with {result.returncode}: {result.stderr.strip()[:200]}")
        if result.truncated:
            raise SourceError(f"output exceeds {self._max} bytes")
        return parse_output(result.stdout, self._config.format)


def load_plugin(config: PluginSourceConfig) -> TelemetrySource:
    """Instantiate a plugin source from the ``edge_agent.sources`` entry-point group.

    Raises:
        ConfigError: No such entry point, or the factory failed or returned no source.
    """
    key = f"telemetry.plugin[{config.name}].entry_point"
    found = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    matches = [ep for ep in found if ep.name == config.entry_point]
    if not matches:
        known = sorted(ep.name for ep in found) or ["none installed"]
        raise ConfigError(
            [
                (
                    f"{key} = {config.entry_point!r}: no such entry point in group "
                    f"{ENTRY_POINT_GROUP!r}; fix: install the plugin package or use one of {known}"
                )
            ]
        )
    try:
        factory: Callable[[str, Mapping[str, Any]], Any] = matches[0].load()
        source = factory(config.name, dict(config.options))
    except Exception as exc:
        raise ConfigError(
            [f"{key} = {config.entry_point!r}: the plugin failed to load: {exc}"]
        ) from exc
    if not isinstance(source, TelemetrySource):
        raise ConfigError(
            [f"{key} = {config.entry_point!r}: the factory returned no source (needs name, read)"]
        )
    return source


def build_sources(config: TelemetryConfig) -> dict[str, tuple[TelemetrySource, float, bool]]:
    """Every configured source with its configured interval and whether it is enabled.

    Raises:
        ConfigError: A plugin cannot be loaded.
    """
    sources: dict[str, tuple[TelemetrySource, float, bool]] = {
        "system": (
            SystemSource(config.system.disk_paths),
            config.system.interval_s,
            config.system.enabled,
        )
    }
    for cmd in config.command:
        sources[cmd.name] = (CommandSource(cmd), cmd.interval_s, cmd.enabled)
    for plugin in config.plugin:
        source = load_plugin(plugin) if plugin.enabled else _Disabled(plugin.name)
        sources[plugin.name] = (source, plugin.interval_s, plugin.enabled)
    return sources


class _Disabled:
    def __init__(self, name: str) -> None:
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def read(self) -> dict[str, Any]:
        raise SourceError("disabled in the configuration; enable it and reload (SIGHUP)")
