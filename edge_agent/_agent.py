"""``Agent``: the daemon's life cycle around one :class:`~device_sdk.DeviceClient`.

``await Agent(config).run()`` takes the single-instance lock, then runs *sessions*. A session
loads the identity (provisioning by claim on first boot), opens the device client with the
durable outbox in the state directory, and starts each subsystem as a named task with
:func:`~edge_agent._tasks.start`: health endpoint, telemetry scheduler, settings shadow,
commands, jobs. Once all of them are ready *and* the client is connected, it reports
``READY=1`` to systemd (``task_status.started()`` for in-process callers).

:meth:`Agent.request_stop` (SIGTERM) ends the session: subsystems are cancelled, the outbox
gets up to ``transport.drain_timeout_s`` to empty, the client disconnects and whatever is
left stays on disk for the next start. :meth:`Agent.request_reload` (SIGHUP) re-reads the
configuration file; if it is valid the session restarts with it, otherwise the agent keeps
running with the old one and logs the problems.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from typing import TYPE_CHECKING, Any, Protocol

from device_sdk import (
    AuthorizationError,
    ClientState,
    DeviceClient,
    DeviceIdentity,
    DeviceSdkError,
    Endpoint,
    OutboxConfig,
    ReconnectPolicy,
    SystemClock,
)
from edge_agent._config import AgentConfig, load_config
from edge_agent._errors import ConfigError
from edge_agent._health import HealthServer
from edge_agent._identity import (
    connection_options,
    greengrass_identity,
    load_endpoint,
    provision,
)
from edge_agent._lock import InstanceLock
from edge_agent._observe import AgentStats, render_metrics
from edge_agent._settings import RuntimeSettings, SourceSettings
from edge_agent._sources import build_sources
from edge_agent._systemd import SystemdNotifier
from edge_agent._tasks import IGNORED, TaskStatus, start
from edge_agent._telemetry import TelemetryScheduler
from edge_agent._version import __version__

if TYPE_CHECKING:
    from device_sdk import Clock, Transport
    from device_sdk.transport import TransportKind
    from edge_agent._ota import OtaRuntime

__all__ = ["Agent", "Subsystem", "SubsystemFactory"]

_log = logging.getLogger(__name__)
STATUS_FILE = "status.json"
_WATCH_INTERVAL_S = 1.0
_CANCEL_RETRY_S = 0.2


class Subsystem(Protocol):
    """A part of the agent that runs while the device client is open."""

    name: str

    async def run(self, *, task_status: TaskStatus = IGNORED) -> None:
        """Run until cancelled; call ``task_status.started()`` when ready."""
        ...


class SubsystemFactory(Protocol):
    """Builds a subsystem for one session."""

    def __call__(self, session: Session) -> Subsystem | None:
        """The subsystem, or ``None`` when the configuration turns it off."""
        ...


@dataclasses.dataclass
class Session:
    """What one session's subsystems share."""

    config: AgentConfig
    device: DeviceClient
    scheduler: TelemetryScheduler
    stats: AgentStats
    agent: Agent


class Agent:
    """The edge agent.

    Args:
        config: The validated configuration.
        clock: Time source (tests inject one).
        notifier: systemd notifier (defaults to ``$NOTIFY_SOCKET``).
        transport: A ready :class:`~device_sdk.Transport` instead of one built from the
            configuration (Greengrass IPC, tests).
        subsystems: Extra subsystem factories (shadow, commands, jobs are added by default
            when their ``device_sdk`` modules are available).
        logger: Logger (defaults to this module's).
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock | None = None,
        notifier: SystemdNotifier | None = None,
        transport: Transport | None = None,
        subsystems: list[SubsystemFactory] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = config
        self._clock = clock or SystemClock()
        self._notifier = notifier or SystemdNotifier()
        self._transport = transport
        self._extra = list(subsystems or [])
        self._log = logger or _log
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._started_at = self._clock.now()
        self.stats = AgentStats()
        self.session: Session | None = None
        self.health: HealthServer | None = None
        self.exit_reason: str | None = None
        self.ota: OtaRuntime | None = None

    # -- control ------------------------------------------------------------------------

    def request_stop(self, *, reason: str = "stop requested") -> None:
        """End the agent (SIGTERM/SIGINT): drain briefly, persist, disconnect."""
        if not self._stop.is_set():
            self._log.info("stopping: %s", reason)
            self.exit_reason = self.exit_reason or reason
        self._stop.set()

    def request_reload(self) -> None:
        """Re-read the configuration file and restart the session with it (SIGHUP)."""
        self._reload.set()

    @property
    def clock(self) -> Clock:
        """The agent's time source."""
        return self._clock

    @property
    def uptime_s(self) -> float:
        """Seconds since the agent was created."""
        return self._clock.now() - self._started_at

    def firmware_version(self) -> str:
        """The active slot's version with OTA configured, else the configured version."""
        if self.ota is not None:
            return self.ota.firmware_version
        return self.config.read_firmware_version()

    def _start_ota(self, config: AgentConfig) -> None:
        """Agent start is a boot: build the OTA runtime and run the fake bootloader once."""
        if not config.ota.enabled:
            return
        from edge_agent._ota import OtaRuntime  # noqa: PLC0415 - only with OTA configured

        try:
            self.ota = OtaRuntime(config, logger=self._log.getChild("ota"))
        except OSError as exc:
            source = str(config.source_file) if config.source_file else None
            problem = (
                f"[ota]: cannot set up OTA: {exc}; fix: check ota.slot_root and the "
                "ota.trusted_keys files (readable by the agent, slot_root writable)"
            )
            raise ConfigError([problem], path=source) from exc
        self.ota.boot()

    # -- main loop ----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus = IGNORED) -> None:
        """Run until :meth:`request_stop`.

        Raises:
            AlreadyRunningError: Another agent uses the state directory.
            IdentityError: No identity and provisioning impossible.
            AuthorizationError: IoT Core refused the certificate (do not retry at once).
        """
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        with InstanceLock(config.lock_file):
            self._start_ota(config)
            first = True
            while True:
                self._reload.clear()
                await self._session(config, task_status if first else IGNORED)
                first = False
                if self._stop.is_set():
                    break
                config = await self._reloaded(config)
                self.config = config
        self._log.info("edge agent stopped")

    async def _reloaded(self, config: AgentConfig) -> AgentConfig:
        if config.source_file is None:
            return config
        try:
            new = await asyncio.to_thread(load_config, config.source_file)
        except ConfigError as exc:
            for problem in exc.problems:
                self._log.error("reload refused, keeping the running configuration: %s", problem)
            return config
        if new.state_dir != config.state_dir:
            self._log.error("reload: state_dir cannot change while running; keeping it")
            new = new.model_copy(update={"state_dir": config.state_dir})
        if new.ota != config.ota:
            self._log.error("reload: [ota] changes take effect at the next restart; keeping it")
            new = new.model_copy(update={"ota": config.ota})
        self._log.info("configuration reloaded from %s", config.source_file)
        return new

    async def _session(self, config: AgentConfig, task_status: TaskStatus) -> None:
        identity: DeviceIdentity | None
        if config.transport.mode == "greengrass":
            identity = greengrass_identity(config)
            endpoint = None
        else:
            identity = await self._identity_or_stop(config)
            if identity is None:
                return
            endpoint = load_endpoint(config)
        sources = build_sources(config.telemetry)
        defaults = {name: SourceSettings(i, e) for name, (_, i, e) in sources.items()}
        settings = RuntimeSettings.from_defaults(defaults)
        transport: Transport | TransportKind = self._transport or config.transport.kind
        if config.transport.mode == "greengrass" and self._transport is None:
            from edge_agent._greengrass import GreengrassIpcTransport  # noqa: PLC0415

            transport = GreengrassIpcTransport(identity.thing_name)
        t = config.transport
        device = DeviceClient(
            identity,
            endpoint or _NO_ENDPOINT,
            transport=transport,
            outbox=OutboxConfig(
                config.outbox_file,
                max_messages=t.outbox_max_messages,
                synchronous=t.outbox_synchronous,
            ),
            options=connection_options(config),
            reconnect=ReconnectPolicy(base_s=t.reconnect_base_s, cap_s=t.reconnect_cap_s),
            require_initial_connection=False,
            clock=self._clock,
            logger=self._log.getChild("device"),
        )
        scheduler = TelemetryScheduler(
            identity.thing_name,
            {name: src for name, (src, _, _) in sources.items()},
            settings,
            device,
            clock=self._clock,
            logger=self._log.getChild("telemetry"),
        )
        async with device:
            session = Session(config, device, scheduler, self.stats, self)
            self.session = session
            try:
                await self._run_subsystems(session, task_status)
            finally:
                self.session = None
                await self._drain(device, config.transport.drain_timeout_s)

    async def _identity_or_stop(self, config: AgentConfig) -> DeviceIdentity | None:
        stop = asyncio.ensure_future(self._stop.wait())
        work = asyncio.ensure_future(provision(config))
        try:
            await asyncio.wait({stop, work}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if work.cancelled():
            return None
        return work.result()

    async def _run_subsystems(self, session: Session, task_status: TaskStatus) -> None:
        config, device = session.config, session.device
        name = f"edge_agent[{device.thing_name}]"
        async with asyncio.TaskGroup() as tg:
            tasks: list[asyncio.Task[None]] = []
            if config.health.enabled:
                self.health = HealthServer(
                    config.health.host,
                    config.health.port,
                    health=self._health,
                    metrics=self._metrics,
                )
                tasks.append(await start(tg, self.health.run, name=f"{name}.health"))
                self._write_status_file(config)
            tasks.append(await start(tg, session.scheduler.run, name=f"{name}.telemetry"))
            for factory in self._factories():
                subsystem = factory(session)
                if subsystem is not None:
                    tasks.append(await start(tg, subsystem.run, name=f"{name}.{subsystem.name}"))
            tasks.append(tg.create_task(self._watch(device), name=f"{name}.watch"))
            if await self._until_connected(device):
                await _report_running(device)
                self._notifier.ready(f"connected as {device.thing_name}")
                self._log.info("edge agent ready: connected as %s", device.thing_name)
                task_status.started()
                await self._until_stop_or_reload()
            await _cancel_all(tasks, self._log)
        if self._stop.is_set():
            self._notifier.stopping()
        else:
            self._notifier.reloading()

    def _factories(self) -> list[SubsystemFactory]:
        from edge_agent._subsystems import default_subsystems  # noqa: PLC0415

        return [*default_subsystems(), *self._extra]

    async def _until_connected(self, device: DeviceClient) -> bool:
        waiter = asyncio.ensure_future(device.wait_connected())
        ended = asyncio.ensure_future(self._until_stop_or_reload())
        try:
            await asyncio.wait({waiter, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            ended.cancel()
        if waiter.done() and not waiter.cancelled() and waiter.exception() is not None:
            raise waiter.exception()  # type: ignore[misc]
        return waiter.done() and not waiter.cancelled()

    async def _until_stop_or_reload(self) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        reload = asyncio.ensure_future(self._reload.wait())
        try:
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            reload.cancel()

    async def _watch(self, device: DeviceClient) -> None:
        """End the agent when the client gives up (authorization refused)."""
        while not _failed(device):
            with contextlib.suppress(DeviceSdkError):
                await device.wait_connected()
            await self._clock.sleep(_WATCH_INTERVAL_S)
        failure = device.failure
        self.exit_reason = f"connection refused for good: {failure}"
        self._log.error("%s", self.exit_reason)
        if isinstance(failure, AuthorizationError):
            raise failure
        self.request_stop(reason=self.exit_reason)

    async def _drain(self, device: DeviceClient, timeout_s: float) -> None:
        if device.state is not ClientState.CONNECTED or timeout_s <= 0:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await device.drain()
        except TimeoutError:
            depth = device.outbox_statistics().depth
            self._log.info("stopping with %d unacknowledged messages kept on disk", depth)

    # -- observation --------------------------------------------------------------------

    def _health(self) -> tuple[bool, dict[str, Any]]:
        session = self.session
        details: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(self.uptime_s, 1),
        }
        if session is None:
            details["state"] = "starting"
            return False, details
        device = session.device
        details["thing_name"] = device.thing_name
        details["state"] = str(device.state)
        with contextlib.suppress(RuntimeError):
            stats = device.outbox_statistics()
            details["outbox_depth"] = stats.depth
            details["outbox_oldest_age_s"] = round(stats.oldest_age_s, 1)
        details["telemetry"] = {
            name: {"readings": s.readings, "errors": s.errors, "last_error": s.last_error}
            for name, s in session.scheduler.stats.items()
        }
        healthy = device.state is ClientState.CONNECTED
        details["status"] = "ok" if healthy else "degraded"
        return healthy, details

    def _metrics(self) -> str:
        return render_metrics(self, self.session)

    def _write_status_file(self, config: AgentConfig) -> None:
        if self.health is None:
            return
        doc = {
            "pid": os.getpid(),
            "health_url": f"http://{_url_host(config.health.host)}:{self.health.port}",
            "version": __version__,
        }
        path = config.state_dir / STATUS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc) + "\n")
        tmp.replace(path)


async def _report_running(device: DeviceClient) -> None:
    """Tell a Greengrass nucleus the component is RUNNING (other transports: nothing)."""
    transport = device.transport
    if hasattr(transport, "report_running"):
        from edge_agent._greengrass import LifecycleReporter  # noqa: PLC0415

        if isinstance(transport, LifecycleReporter):
            await transport.report_running()


async def _cancel_all(tasks: list[asyncio.Task[None]], log: logging.Logger) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again those that ignore it.

    On Python 3.11, ``asyncio.wait_for`` (used inside aiomqtt) can swallow a cancellation
    that races with the completion it waits for; a task that lost its cancellation that way
    would otherwise keep the agent from stopping.
    """
    pending = {t for t in tasks if not t.done()}
    for task in pending:
        task.cancel()
    while pending:
        _done, pending = await asyncio.wait(pending, timeout=_CANCEL_RETRY_S)
        for task in pending:
            log.debug("%s ignored its cancellation; cancelling it again", task.get_name())
            task.cancel()


def _failed(device: DeviceClient) -> bool:
    return device.state is ClientState.FAILED


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):  # noqa: S104 - only turning a wildcard bind into a URL
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


_NO_ENDPOINT = Endpoint("greengrass-ipc.invalid")
"""Placeholder: in Greengrass mode the nucleus, not the agent, connects to IoT Core."""
